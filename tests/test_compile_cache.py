"""The compile cache: one folder per model, device, OpenVINO version and driver; listed, pruned, warmed.

CPU supports OpenVINO's CACHE_DIR like GPU and NPU, so the same code path is exercised here with real
compiled blobs.
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
    cache = tmp_path / "cache"
    monkeypatch.setenv("GLM4_EDGE_CACHE_DIR", str(cache))
    monkeypatch.setenv("GLM4_EDGE_CONFIG_DIR", str(tmp_path / "config"))
    return {**os.environ}


@pytest.fixture
def model(tiny_int4, tmp_path):
    """A private copy: the tests rewrite it."""
    return shutil.copytree(tiny_int4, tmp_path / "tiny-int4")


def devices(env, *args):
    done = subprocess.run([*CLI, "devices", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def listing(env) -> dict:
    done = devices(env, "--cache", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cpu_uses_no_cache_until_warmed_then_the_keyed_entry(env, model, tmp_path):
    assert "is empty" in devices(env, "--cache").stdout and "--warm-cache" in devices(env, "--cache").stdout
    from glm4_edge import compile_cache
    from glm4_edge.model import plan_load

    assert "CACHE_DIR" not in plan_load(model, "CPU").properties
    assert listing(env)["entries"] == [] and not (tmp_path / "cache").exists()  # a CPU load creates nothing

    warmed = devices(env, "--warm-cache", str(model), "--device", "CPU")
    assert warmed.returncode == 0 and "compiled" in warmed.stdout and "1 blob(s)" in warmed.stdout
    entry = compile_cache.entry_path(model, "CPU")
    assert entry.parent.name.startswith("tiny-int4-") and entry.name.startswith("CPU-ov")
    assert any(entry.glob("*.blob"))
    assert plan_load(model, "CPU").properties["CACHE_DIR"] == str(entry)

    listed = listing(env)["entries"]
    assert [(e["record"]["device"], e["status"]) for e in listed] == [("CPU", "current")]
    assert listed[0]["size_bytes"] > 0 and listed[0]["record"]["model"] == str(model.resolve())

    import glm4_edge  # the cached blob loads and generates

    assert glm4_edge.load(model, "CPU").generate("hi", max_new_tokens=3, temperature=0).stats.generated_tokens


def test_stale_entries_are_reported_and_pruned_the_rest_kept(env, model, tmp_path):
    from glm4_edge import compile_cache

    assert devices(env, "--warm-cache", str(model), "--device", "CPU").returncode == 0
    old_entry = compile_cache.entry_path(model, "CPU")
    root = tmp_path / "cache" / "ov-cache"
    os.utime(model / "openvino_model.bin")  # a reconversion rewrites the weights
    compile_cache._fingerprint.cache_clear()
    # A GPU entry for a device this machine lacks is kept; an entry from another OpenVINO is stale.
    for device, openvino in (("GPU", compile_cache.openvino_version()), ("NPU", "2024.6.0")):
        folder = root / "other-model-0123456789ab" / f"{device}-ov{openvino}"
        folder.mkdir(parents=True)
        (folder / "1.blob").write_bytes(b"x" * 100)
        record = compile_cache.CacheRecord(str(model.resolve()), "tiny-int4", compile_cache.model_fingerprint(model),
                                           device, openvino, "1.0", "then", "then")
        (folder / compile_cache.ENTRY_FILE).write_text(json.dumps(record.__dict__))
    (root / "12345.blob").write_bytes(b"y" * 50)  # the layout before keyed folders

    statuses = sorted(e["status"] for e in listing(env)["entries"])
    assert statuses == ["device absent", f"stale: compiled by OpenVINO 2024.6.0, running "
                        f"{compile_cache.openvino_version()}", "stale: model rewritten since",
                        "stale: no record (left by an older glm4-edge or another tool)"]
    assert compile_cache.entry_path(model, "CPU") != old_entry  # the rewritten model gets a fresh folder

    pruned = devices(env, "--cache", "--prune")
    assert pruned.returncode == 0 and "pruned 3 stale entries" in pruned.stdout
    left = listing(env)["entries"]
    assert [e["status"] for e in left] == ["device absent"]
    assert "nothing to prune" in devices(env, "--cache", "--prune").stdout
    assert not old_entry.exists() and not (root / "12345.blob").exists()


def test_bad_requests_are_one_line_errors_and_leave_nothing(env, model, tmp_path):
    for args, message in ((["--warm-cache", str(model), "--device", "NPU"], "device NPU not found"),
                          (["--warm-cache", str(model)], "needs the device"),
                          (["--warm-cache", str(tmp_path / "nope"), "--device", "CPU"], "no such model folder"),
                          (["--prune"], "--prune goes with --cache")):
        done = devices(env, *args)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "cache" / "ov-cache").exists() or listing(env)["entries"] == []
