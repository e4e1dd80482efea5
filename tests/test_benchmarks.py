"""benchmarks/compare_engines.py end to end on the tiny shape: every step of the README's comparison runs.

The numbers mean nothing at this size; the test checks that models get built, each engine measures in its
own process, the side-by-side decode runs, and the report and plots are written.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

ENGINES = ("edge-int4-cpu", "genai-int4-cpu", "edge-fp16", "torch-bf16")
PAIRED = ("edge-int4-cpu", "genai-int4-cpu")


def test_compare_engines_smoke_run(tmp_path):
    work, docs = tmp_path / "out", tmp_path / "docs"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_engines.py"), "--shape", "tiny", "--layers", "2",
         "--rounds", "1", "--prompt-lengths", "32,64", "--decode-prompt", "32", "--only", ",".join(ENGINES),
         "--paired", ",".join(PAIRED), "--paired-cycles", "2", "--work", str(work), "--docs", str(docs)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "tiny-L2" / "results.json").read_text())
    measured = {r["key"]: r for r in report["results"]}
    assert set(measured) == set(ENGINES)
    for key, r in measured.items():
        assert r["tokens_per_s"] > 0 and r["peak_rss"] > 0, key
        assert r["weights"]["per_token"] > 0, key
    assert set(report["paired"]["engines"]) == set(PAIRED)
    assert all(len(e["values"]) == 2 for e in report["paired"]["engines"].values())
    text = (docs / "benchmarks.md").read_text()
    assert "tiny GLM-4 shape" in text and "Decode side by side" in text
    assert all(f"`{key}`" in text for key in ENGINES)
    for plot in ("bench-decode.png", "bench-ttft.png"):
        assert (docs / plot).read_bytes().startswith(b"\x89PNG"), plot


def test_benchmark_variants_are_what_their_names_say():
    """A variant named without -rNN keeps every weight in INT4 (ratio 1.0), whatever the cpu preset's ratio is:
    the sweep once measured "asym g32" and "sym channel-wise" with the preset's 20% INT8 inherited unnamed."""
    import re

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_models
    import quality_sweep

    variants = {**quality_sweep.CANDIDATES,
                **{k: v for k, v in bench_models.VARIANTS.items() if v.overrides}}
    assert len(variants) > 10
    for name, variant in variants.items():
        settings = variant.settings()
        if settings.weight_format != "int4":
            continue
        ratio = re.search(r"-r(\d+)", name)
        assert settings.ratio == (int(ratio.group(1)) / 100 if ratio else 1.0), name
        assert settings.sym == ("-sym" in name or name == "edge-int4-gpu"), name
