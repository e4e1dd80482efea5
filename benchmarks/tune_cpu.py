"""Which compression preset and runtime properties decode fastest on this CPU, alternating them.

    python benchmarks/tune_cpu.py --layers 8 --rounds 3
    python benchmarks/tune_cpu.py --layers 2 --only default,sym,sym-dq0     # a subset

Each setting is one model folder (a compression variant, see bench_models.VARIANTS) plus pipeline
properties, run through glm4-edge's own path (`glm4_edge.load(..., properties=...)` + Model.stream)
unless it is a raw openvino-genai setting (the attention backend, which glm4_edge.load fixes by
always passing a scheduler config). Rounds alternate all settings; medians over the quiet rounds
(see bench_runner.quiet_rounds) go to benchmarks/out/L{layers}/tuning.json, which
compare_engines.py includes in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_models  # noqa: E402
from bench_engines import EngineSpec  # noqa: E402
from bench_runner import median, paired_decode, quiet_rounds, run_engine, wait_for_quiet  # noqa: E402

DEFAULT_ROUNDS = 3
DEFAULT_GEN_TOKENS = 64
DECODE_PROMPT = 128
TTFT_PROMPT = 1024
BASELINE = "default"
MAX_PAIRED = 6  # each INT4 8-layer model holds ~2.5 GB while loaded
PAIRED_GEN_TOKENS = 32


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    model: str  # "edge-int4-cpu" (convert's cpu preset) or a bench_models.VARIANTS name
    kind: str = "edge"
    properties: dict[str, Any] = field(default_factory=dict)
    threads: int = 0


SYM = "edge-int4-sym-g128"  # symmetric INT4 group 128 (the former gpu preset; the npu preset up to 5B)
ASYM = "edge-int4-asym-g128"  # asymmetric INT4 group 128 (the first cpu preset)
# glm4_edge.load sets DYNAMIC_QUANTIZATION_GROUP_SIZE on CPU; a setting that wants OpenVINO's own
# default says so with this value.
OPENVINO_DQ = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}
SETTINGS = [
    Setting("default", "the cpu preset as glm4-edge loads it (DQ 128, or the weight group when smaller)",
            "edge-int4-cpu"),
    Setting("cpu-dq32", "the cpu preset, OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE (32)", "edge-int4-cpu",
            properties=OPENVINO_DQ),
    Setting("cpu-dq64", "the cpu preset, DQ 64", "edge-int4-cpu", properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}),
    Setting("cpu-dq256", "the cpu preset, DQ 256", "edge-int4-cpu",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 256}),
    Setting("cpu-dq4096", "the cpu preset, DQ 4096 (one group per row of the hidden size)", "edge-int4-cpu",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 4096}),
    Setting("cpu-kv-u4", "the cpu preset, KV_CACHE_PRECISION=u4", "edge-int4-cpu",
            properties={"KV_CACHE_PRECISION": "u4"}),
    Setting("sym-g128-dq128", "sym g128 (gpu preset), DQ 128", SYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("asym-g128-dq128", "asym g128 (first cpu preset), DQ 128", ASYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("asym-g128-dq32", "asym g128 (first cpu preset), OpenVINO's DQ (32)", ASYM, properties=OPENVINO_DQ),
    Setting("int8emb", "asym g128, INT8 embeddings/lm_head (optimum's default)", "edge-int4-int8emb"),
    Setting("asym-g64", "asym group 64", "edge-int4-asym-g64"),
    Setting("asym-g32", "asym group 32", "edge-int4-asym-g32"),
    Setting("asym-cw", "asym channel-wise", "edge-int4-asym-cw"),
    Setting("sym", "sym group 128", SYM),
    Setting("sym-g64", "sym group 64", "edge-int4-sym-g64"),
    Setting("sym-cw", "sym channel-wise", "edge-int4-sym-cw"),
    Setting("sym-kv-f16", "sym g128, KV_CACHE_PRECISION=f16", SYM, properties={"KV_CACHE_PRECISION": "f16"}),
    Setting("sym-kv-u4", "sym g128, KV_CACHE_PRECISION=u4", SYM, properties={"KV_CACHE_PRECISION": "u4"}),
    Setting("sym-dq0", "sym g128, DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (off)", SYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}),
    Setting("sym-dq128", "sym g128, DYNAMIC_QUANTIZATION_GROUP_SIZE=128", SYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("sym-f32", "sym g128, INFERENCE_PRECISION_HINT=f32", SYM,
            properties={"INFERENCE_PRECISION_HINT": "f32"}),
    Setting("sym-1thread", "sym g128, INFERENCE_NUM_THREADS=1", SYM, properties={"INFERENCE_NUM_THREADS": 1}),
    Setting("sym-nopin", "sym g128, ENABLE_CPU_PINNING=false", SYM, properties={"ENABLE_CPU_PINNING": False}),
    Setting("sym-tbb-static", "sym g128, TBB_PARTITIONER=static", SYM,
            properties={"TBB_PARTITIONER": "STATIC"}),
    Setting("sym-dq256", "sym g128, DYNAMIC_QUANTIZATION_GROUP_SIZE=256", SYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 256}),
    Setting("sym-g64-dq64", "sym g64, DYNAMIC_QUANTIZATION_GROUP_SIZE=64", "edge-int4-sym-g64",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}),
    Setting("sym-cw-dq128", "sym channel-wise, DYNAMIC_QUANTIZATION_GROUP_SIZE=128", "edge-int4-sym-cw",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("sym-cw-dq4096", "sym channel-wise, DYNAMIC_QUANTIZATION_GROUP_SIZE=4096", "edge-int4-sym-cw",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 4096}),
    Setting("asym-cw-dq128", "asym channel-wise, DYNAMIC_QUANTIZATION_GROUP_SIZE=128", "edge-int4-asym-cw",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("raw-dq128", "raw openvino-genai, sym g128, DQ 128, default backend", SYM, kind="genai",
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}),
    Setting("raw-sdpa-dq128", "raw openvino-genai, sym g128, DQ 128, ATTENTION_BACKEND=SDPA", SYM,
            kind="genai", properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128, "ATTENTION_BACKEND": "SDPA"}),
    Setting("raw-pa", "raw openvino-genai, sym g128, ATTENTION_BACKEND=PA", SYM, kind="genai",
            properties={"ATTENTION_BACKEND": "PA"}),
    Setting("raw-sdpa", "raw openvino-genai, sym g128, ATTENTION_BACKEND=SDPA", SYM, kind="genai",
            properties={"ATTENTION_BACKEND": "SDPA"}),
    Setting("sym-dq128-lookup", "sym g128, DQ 128, --prompt-lookup (random text: see notes)", SYM,
            properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128, "prompt_lookup": True}),
    Setting("llama-q4_0", "llama.cpp Q4_0 (reference)", "gguf-q4_0", kind="llama"),
    Setting("llama-q4_0-1t", "llama.cpp Q4_0, 1 thread (reference)", "gguf-q4_0", kind="llama",
            threads=1),
    Setting("llama-q4_k_m", "llama.cpp Q4_K_M (reference)", "gguf-q4_k_m", kind="llama"),
    Setting("llama-q5_k_m", "llama.cpp Q5_K_M (reference)", "gguf-q5_k_m", kind="llama"),
    Setting("llama-q8_0", "llama.cpp Q8_0 (reference)", "gguf-q8_0", kind="llama"),
    # Quality-first candidates (docs/benchmarks.md, "Quality"), as glm4-edge loads them (DQ 128).
    Setting("asym-g32-dq128", "asym g32, DQ 128", "edge-int4-asym-g32"),
    Setting("asym-g32-dq32", "asym g32, DQ 32", "edge-int4-asym-g32", properties=OPENVINO_DQ),
    Setting("asym-g32-r80", "asym g32, 20% INT8 (ratio 0.8), DQ 128", "edge-int4-asym-g32-r80"),
    Setting("asym-g64-r80", "asym g64, 20% INT8 (ratio 0.8), DQ 128", "edge-int4-asym-g64-r80"),
    Setting("asym-g32-r90", "asym g32, 10% INT8 (ratio 0.9), as glm4-edge loads it", "edge-int4-asym-g32-r90"),
    Setting("nf4-g32", "NF4 g32, as glm4-edge loads it", "edge-nf4-g32"),
    Setting("nf4-g64", "NF4 g64, as glm4-edge loads it", "edge-nf4-g64"),
    Setting("sym-g32", "sym g32 (Q4_0's layout), DQ 128", "edge-int4-sym-g32"),
    Setting("sym-cw-fast", "sym channel-wise (the fast preset), DQ 128", "edge-int4-sym-cw"),
    Setting("int8", "INT8 asym channel-wise, DQ 128", "edge-int8"),
    Setting("sym-g128", "sym g128 (the npu preset up to 5B parameters)", "edge-int4-sym-g128"),
]


def build(setting: Setting, layers: int, log) -> Path:
    if setting.model.startswith("gguf-"):
        return bench_models.gguf(layers, setting.model.removeprefix("gguf-"), log)
    if setting.model == "edge-int4-cpu":
        return bench_models.edge_convert(layers, "edge-int4-cpu", "int4", log)
    return bench_models.edge_variant(layers, bench_models.VARIANTS[setting.model], log)


def summarize(setting: Setting, runs: list[dict[str, Any]]) -> dict[str, Any]:
    quiet = quiet_rounds(runs)
    rates = [1.0 / r["decode"]["tpot_s"] for r in runs if r["decode"]["tpot_s"]]
    tpot = median([r["decode"]["tpot_s"] for r in quiet])
    ttft = median([r["ttft_s"].get(str(TTFT_PROMPT)) for r in quiet])
    return {"key": setting.key, "label": setting.label, "model": setting.model, "kind": setting.kind,
            "properties": setting.properties, "rounds": len(runs), "quiet_rounds": len(quiet),
            "tokens_per_s": 1.0 / tpot if tpot else None, "tokens_per_s_min": min(rates, default=None),
            "tokens_per_s_max": max(rates, default=None), "ttft_s": ttft,
            "prefill_tokens_per_s": TTFT_PROMPT / ttft if ttft else None,
            "contention": [round(r["contention"], 3) for r in runs]}


def run_paired(args: argparse.Namespace, chosen: list[Setting], paths: dict[str, Path], log) -> int:
    """Side-by-side decode of a few settings; the first one is the baseline of the ratios."""
    import statistics

    if not 2 <= len(chosen) <= MAX_PAIRED:
        raise SystemExit(f"--paired takes 2 to {MAX_PAIRED} settings (--only), got {len(chosen)}")
    specs = [EngineSpec(key=s.key, kind=s.kind, path=str(paths[s.key]), properties=s.properties,
                        threads=s.threads, decode_prompt=DECODE_PROMPT, gen_tokens=PAIRED_GEN_TOKENS)
             for s in chosen]
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet, log)
    raw = paired_decode(specs, args.paired, DECODE_PROMPT, PAIRED_GEN_TOKENS, log)
    base = chosen[0].key
    results = []
    for setting in chosen:
        values = raw["rates"][setting.key]
        ratios = sorted(a / b for a, b in zip(values, raw["rates"][base], strict=True))
        results.append({"key": setting.key, "label": setting.label, "model": setting.model,
                        "properties": setting.properties, "tokens_per_s": statistics.median(values),
                        "tokens_per_s_min": min(values), "tokens_per_s_max": max(values),
                        "vs_first": statistics.median(ratios), "vs_first_range": [ratios[0], ratios[-1]],
                        "contention": statistics.median(raw["contention"][setting.key])})
        log(f"{setting.key:>16}: {results[-1]['tokens_per_s']:.2f} tok/s, {results[-1]['vs_first']:.3f}x "
            f"{base} (per-cycle range {ratios[0]:.2f}-{ratios[-1]:.2f})")
    name = "paired-" + "-".join(s.key for s in chosen) + ".json"
    out = args.out or bench_models.layer_folder(args.layers) / name
    out.write_text(json.dumps({"layers": args.layers, "cycles": args.paired, "baseline": base,
                               "bandwidth_gb_s": [b / 1e9 for b in raw["bandwidth"]], "results": results},
                              indent=2))
    log(f"results in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shape", choices=bench_models.SHAPES, default=bench_models.SHAPES[0])
    parser.add_argument("--weights", choices=bench_models.WEIGHTS, default=bench_models.WEIGHTS[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each engine run, wait up to this long for other processes to go idle")
    parser.add_argument("--only", help="comma-separated setting keys")
    parser.add_argument("--paired", type=int, default=0, metavar="CYCLES",
                        help="instead of rounds: keep the settings loaded side by side (at most "
                             f"{MAX_PAIRED}) and alternate decode runs for CYCLES cycles")
    parser.add_argument("--out", type=Path,
                        help="results file (default benchmarks/out/L{layers}/tuning.json)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    bench_models.configure(args.shape, weights=args.weights)
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    keyed = {s.key: s for s in SETTINGS}
    chosen = [keyed[k] for k in wanted if k in keyed] if wanted else list(SETTINGS)  # --only's order
    paths = {s.key: build(s, args.layers, log) for s in chosen}
    if args.paired:
        return run_paired(args, chosen, paths, log)
    runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in chosen}
    for round_index in range(args.rounds):
        shift = round_index % len(chosen)
        for setting in chosen[shift:] + chosen[:shift]:
            spec = EngineSpec(key=setting.key, kind=setting.kind, path=str(paths[setting.key]),
                              properties=setting.properties, threads=setting.threads,
                              prompt_lengths=[DECODE_PROMPT, TTFT_PROMPT], decode_prompt=DECODE_PROMPT,
                              gen_tokens=args.gen_tokens, seed=round_index)
            if args.wait_quiet:
                wait_for_quiet(args.wait_quiet, log)
            result = run_engine(spec, log)
            if result is None:
                continue
            runs[setting.key].append(result)
            tpot = result["decode"]["tpot_s"]
            log(f"  round {round_index + 1} {setting.key}: {1 / tpot:.2f} tok/s, TTFT {TTFT_PROMPT} "
                f"{result['ttft_s'][str(TTFT_PROMPT)]:.2f} s, others used {result['contention']:.0%}")
    results = [summarize(s, runs[s.key]) for s in chosen if runs[s.key]]
    description = (f"{args.layers}-layer GLM-4-9B-shaped model, glm4-edge's load + stream unless marked raw; "
                   f"decode after a {DECODE_PROMPT}-token prompt, {args.gen_tokens} tokens; "
                   f"TTFT at {TTFT_PROMPT} "
                   f"tokens; {args.rounds} alternating rounds, medians over the quiet ones.")
    out = args.out or bench_models.layer_folder(args.layers) / "tuning.json"
    out.write_text(json.dumps({"layers": args.layers, "prompt": TTFT_PROMPT, "baseline": BASELINE,
                               "description": description, "results": results}, indent=2))
    for r in sorted(results, key=lambda r: -(r["tokens_per_s"] or 0)):
        log(f"{r['key']:>16}: {r['tokens_per_s']:.2f} tok/s ({r['tokens_per_s_min']:.2f}-"
            f"{r['tokens_per_s_max']:.2f}), prefill {r['prefill_tokens_per_s']:.0f} tok/s, quiet "
            f"{r['quiet_rounds']}/{r['rounds']}")
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
