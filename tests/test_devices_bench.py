"""`glm4-edge devices --bench`: every device measured side by side, the winner recorded, AUTO uses it.

Only a CPU exists here; the candidates are CPU and CPU with speculative decoding (the tiny model
drafting for itself), each a real `glm4-edge bench` in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .conftest import CLI, REPO


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("GLM4_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GLM4_EDGE_CONFIG_DIR", str(tmp_path / "config"))
    return {**os.environ}


def test_bench_records_the_winner_and_auto_loads_on_it(env, tiny_int4, tmp_path):
    import glm4_edge
    from glm4_edge import compile_cache, device_bench

    model = shutil.copytree(tiny_int4, tmp_path / "tiny-int4")
    assert glm4_edge.load(model, "AUTO").device == "AUTO"  # nothing measured: OpenVINO's own AUTO

    done = subprocess.run([*CLI, "devices", "--bench", str(model), "--draft", str(model), "--prompt-tokens", "48",
                           "--gen-tokens", "4", "--runs", "1", "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    choice = json.loads(done.stdout)
    assert [s["label"] for s in choice["scores"]] == ["CPU", "CPU + draft"]
    for score in choice["scores"]:
        assert score["error"] is None
        assert score["tokens_per_s"] > 0 and score["ttft_s"] > 0 and score["peak_memory_bytes"] > 2**20
    fastest = max(choice["scores"], key=lambda s: s["tokens_per_s"])
    assert (choice["device"], choice["draft"]) == (fastest["device"], fastest["draft"])
    assert (tmp_path / "config" / device_bench.DEVICE_CHOICE_FILE).is_file()

    auto = glm4_edge.load(model, "AUTO")
    assert auto.device == "CPU" and auto.generate("hi", max_new_tokens=2).stats.device == "CPU"
    info = subprocess.run([*CLI, "info", str(model)], cwd=REPO, env=env, capture_output=True, text=True)
    assert "device for AUTO" in info.stdout and "tok/s decode" in info.stdout

    os.utime(model / "openvino_model.bin")  # reconverted: the measurement no longer applies
    compile_cache._fingerprint.cache_clear()
    assert device_bench.recorded(model) is None and glm4_edge.load(model, "AUTO").device == "AUTO"


def test_winner_is_the_fastest_decode_that_ran():
    from glm4_edge.device_bench import DeviceScore, winner

    scores = [DeviceScore("NPU", "NPU", error="not converted for the NPU"),
              DeviceScore("CPU", "CPU", tokens_per_s=10.0, ttft_s=0.5),
              DeviceScore("GPU", "GPU", tokens_per_s=25.0, ttft_s=0.9),
              DeviceScore("GPU.1", "GPU.1", tokens_per_s=25.0, ttft_s=0.4)]
    assert winner(scores).label == "GPU.1"  # tie on decode: the lower TTFT
    assert winner(scores[:1]) is None


def test_bench_bad_input_is_one_line(env, tmp_path):
    done = subprocess.run([*CLI, "devices", "--bench", str(tmp_path / "missing")], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such model folder" in done.stderr
