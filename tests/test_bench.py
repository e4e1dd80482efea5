"""`glm4-edge bench`: sane JSON figures, fresh exact-length prompts, exact decode counts, bad input."""

from __future__ import annotations

import json

import pytest

import glm4_edge
from glm4_edge.bench import BenchOptions, PromptMaker, Spread, bench
from glm4_edge.cli.common import parse_property

from .test_convert import assert_one_line_error, run_cli

PROMPT_TOKENS = 48
GEN_TOKENS = 6
RUNS = 2


def test_bench_json_has_sane_figures(tiny_int4):
    result = run_cli("bench", str(tiny_int4), "--prompt-tokens", str(PROMPT_TOKENS), "--gen-tokens",
                     str(GEN_TOKENS), "--runs", str(RUNS), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("ttft", "tpot", "tokens_per_s", "prefill_tokens_per_s", "peak_memory", "load", "per_run"):
        assert key in report, key
    assert report["runs"] == RUNS and len(report["per_run"]) == RUNS
    assert report["gen_tokens"] == GEN_TOKENS
    assert all(run["generated_tokens"] == GEN_TOKENS for run in report["per_run"])
    # The maker lands on the exact length, or one under when a merge makes the exact count impossible.
    assert all(PROMPT_TOKENS - 1 <= run["prompt_tokens"] <= PROMPT_TOKENS for run in report["per_run"])
    ttft, rate = report["ttft"], report["tokens_per_s"]
    assert 0 < ttft["min"] <= ttft["median"] <= ttft["max"] < 60
    assert 0 < rate["min"] <= rate["median"] <= rate["max"]
    assert len(ttft["values"]) == RUNS
    assert report["prefill_tokens_per_s"]["median"] > 0
    assert report["load"]["first_s"] > 0 and report["load"]["second_s"] > 0
    assert 10 * 2**20 < report["peak_memory"] < 64 * 2**30
    assert report["units"]["ttft"] == "s" and report["device"] == "CPU"


def test_bench_summary_decodes_past_the_end_of_turn(scripted_model):
    # The scripted model ends its turn after ~13 tokens: ignore_eos must keep it going.
    gen_tokens = 24
    result = run_cli("bench", str(scripted_model), "--prompt-tokens", "32", "--gen-tokens", str(gen_tokens),
                     "--runs", "1", "--warmup", "0", "--property", "INFERENCE_NUM_THREADS=1")
    assert result.returncode == 0, result.stderr
    for words in ("load duration:", "prompt eval rate:", f"eval count:           {gen_tokens} token(s)",
                  "eval rate:", "peak memory:", "INFERENCE_NUM_THREADS=1"):
        assert words in result.stdout, result.stdout


def test_prompts_are_fresh_and_exact(tiny_int4):
    model = glm4_edge.load(tiny_int4)
    maker = PromptMaker(model, seed=1)
    prompts = [maker.make(100) for _ in range(3)]
    assert len(set(prompts)) == 3
    for prompt in prompts:
        assert 99 <= model.count_tokens(model.render(prompt)) <= 100
    again = PromptMaker(model, seed=1).make(100)
    assert again == prompts[0]


def test_bench_api_returns_dataclasses(tiny_int4):
    result = bench(BenchOptions(model=tiny_int4, prompt_tokens=20, gen_tokens=3, runs=1, warmup=0))
    assert isinstance(result.ttft, Spread) and result.tokens_per_s.median > 0
    assert "eval rate" in result.summary()


def test_spread_and_property_parsing():
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.median, spread.min, spread.max) == (2.0, 1.0, 3.0)
    assert spread.relative_spread == pytest.approx(1.0)
    assert parse_property("KV_CACHE_PRECISION=u8") == ("KV_CACHE_PRECISION", "u8")
    assert parse_property("INFERENCE_NUM_THREADS=2") == ("INFERENCE_NUM_THREADS", 2)
    assert parse_property("ENABLE_CPU_PINNING=true") == ("ENABLE_CPU_PINNING", True)


@pytest.mark.parametrize("args,words", [
    (["--runs", "0"], ["--runs 0"]),
    (["--gen-tokens", "1"], ["--gen-tokens 1"]),
    (["--prompt-tokens", "0"], ["--prompt-tokens 0"]),
    (["--warmup", "-1"], ["--warmup -1"]),
    (["--prompt-tokens", "2"], ["too short", "chat template"]),
    (["--prompt-tokens", "5000"], ["exceeds the model's context", "4096"]),
    (["--property", "KV_CACHE_PRECISION"], ["KEY=VALUE"]),
    (["--device", "NPU"], ["NPU not found"]),
])
def test_bench_bad_input(tiny_int4, args, words):
    result = run_cli("bench", str(tiny_int4), "--runs", "1", "--gen-tokens", "2", *args)
    assert_one_line_error(result, *words)


def test_bench_missing_model():
    assert_one_line_error(run_cli("bench", "/nonexistent"), "no such model folder")


def test_peak_memory_is_the_process_own_not_its_parent():
    """A benchmark child started by a parent holding lots of memory must not report the parent's peak."""
    import subprocess
    import sys

    ballast = bytearray(600 * 2**20)  # touched: bytearray zero-fills, so it is resident
    script = "from glm4_edge.model import peak_rss_bytes; print(peak_rss_bytes())"
    own = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert glm4_edge.model.peak_rss_bytes() >= len(ballast)
    del ballast
    assert own < 200 * 2**20, own  # ru_maxrss would say >= 600 MiB here: Linux carries it across exec


def test_bench_on_a_folder_without_our_manifest(tmp_path, tiny_int4):
    """"Any converted model": an OpenVINO folder made by other tools (optimum-cli) has no glm4_edge.json."""
    import shutil

    from glm4_edge.manifest import MANIFEST_NAME

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_int4, foreign)
    (foreign / MANIFEST_NAME).unlink()
    result = run_cli("bench", str(foreign), "--prompt-tokens", "16", "--gen-tokens", "4", "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens_per_s"]["median"] > 0
    model = glm4_edge.load(foreign)
    assert model.family == "glm4" and "not converted by glm4-edge" in model.describe()
