"""glm4-edge against other ways to run the same GLM-4-9B-shaped model on this CPU, in one run.

    python benchmarks/compare_engines.py --layers 8                 # build what is missing, measure, docs
    python benchmarks/compare_engines.py --shape tiny --layers 2 --rounds 1 --work /tmp/b --docs /tmp/b
                                                                    # does everything run? (a minute)
    python benchmarks/compare_engines.py --skip torch,fp16          # leave out slow engines (keys or kinds)
    python benchmarks/compare_engines.py --only edge-int4-cpu,llama-q4_0
    python benchmarks/compare_engines.py --layers 8 --report-only   # rewrite docs from the saved results

The model: GLM-4-9B's real hidden size, FFN, heads, KV heads and vocabulary with `--layers` layers
of random bf16 weights (speed does not depend on the values). Everything built is cached under
benchmarks/out/L{layers}/ (see bench_models.py); the first run at 8 layers spends ~10 min building them.

Fairness: every engine runs in its own fresh process (bench_engines.py) with the same prompts
lengths, greedy decoding, EOS ignored; rounds alternate the engines (and rotate who goes first) so
that noise from other work on the machine spreads over all of them; medians over rounds are
reported. Each engine's share of the memory roofline is (weight bytes read per token / measured
read bandwidth) / time per token: decode reads every weight once per token except the embedding
table, of which it reads one row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import bench_models  # noqa: E402
from bench_engines import EngineSpec  # noqa: E402
from bench_runner import (  # noqa: E402
    machine,
    median,
    memory_bandwidth,
    paired_decode,
    quiet_rounds,
    run_engine,
    wait_for_quiet,
)

from glm4_edge.devices import CPU_DYNAMIC_QUANTIZATION_GROUP  # noqa: E402

DOCS = REPO / "docs"
DEFAULT_LAYERS = 8
DEFAULT_ROUNDS = 3
DEFAULT_PROMPT_LENGTHS = (128, 512, 1024)
DEFAULT_GEN_TOKENS = 64
SLOW_GEN_TOKENS = 16  # fp16 and INT8: several times slower per token, and 16 tokens already time well
TORCH_GEN_TOKENS = 8  # PyTorch bf16: ~0.5 s per token here
TORCH_PROMPT_LENGTHS = (128, 512)  # a 1024-token bf16 prefill costs a minute a round and shows nothing new
BIG_CONSTANT_BYTES = 1 << 20
BASELINE = "llama-q4_0"
# Decode side by side (see bench_runner.paired_decode): the headline comparisons, measured so that
# drifting machine conditions hit all of them alike.
DEFAULT_PAIRED = ("edge-int4-cpu", "genai-int4-cpu", "genai-optimum-int4", "llama-q4_0", "llama-q4_k_m")
DEFAULT_PAIRED_CYCLES = 12
PAIRED_GEN_TOKENS = 32
# What glm4_edge.load sets on CPU beyond OpenVINO's defaults, for raw openvino-genai on equal terms.
EDGE_CPU_PROPERTIES = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": CPU_DYNAMIC_QUANTIZATION_GROUP}


def cpu_preset_words() -> str:
    from glm4_edge.convert import presets

    return presets.describe(presets.resolve("cpu", "int4")).removeprefix("int4 ").replace(", ratio 1", "")


@dataclass
class Entry:
    """One engine of the comparison: what it runs, how to build its model, how to label it."""

    key: str
    kind: str
    label: str
    family: str  # glm4-edge | openvino-genai | optimum-intel | PyTorch | llama.cpp
    build: Callable[[], Path]
    properties: dict[str, Any] = field(default_factory=dict)
    gen_tokens: int = DEFAULT_GEN_TOKENS
    prompt_lengths: tuple[int, ...] | None = None
    threads: int = 0  # 0: --threads, else the engine's default


def entries(layers: int, log) -> list[Entry]:
    def variant(name: str) -> Callable[[], Path]:
        return lambda: bench_models.edge_variant(layers, bench_models.VARIANTS[name], log)

    def gguf(quant: str) -> Callable[[], Path]:
        return lambda: bench_models.gguf(layers, quant, log)

    def cpu_preset() -> Path:
        return bench_models.edge_convert(layers, "edge-int4-cpu", "int4", log)

    def optimum() -> Path:
        return bench_models.optimum_default(layers, log)

    found = [
        Entry("edge-int4-cpu", "edge", f"glm4-edge INT4, the cpu preset ({cpu_preset_words()})", "glm4-edge",
              cpu_preset),
        Entry("edge-int4-gpu", "edge", bench_models.VARIANTS["edge-int4-gpu"].label, "glm4-edge",
              variant("edge-int4-gpu")),
        Entry("edge-int4-asym-g128", "edge", bench_models.VARIANTS["edge-int4-asym-g128"].label, "glm4-edge",
              variant("edge-int4-asym-g128")),
        Entry("edge-int8", "edge", bench_models.VARIANTS["edge-int8"].label, "glm4-edge",
              variant("edge-int8"), gen_tokens=SLOW_GEN_TOKENS),
        Entry("edge-fp16", "edge", "glm4-edge FP16", "glm4-edge",
              lambda: bench_models.edge_convert(layers, "edge-fp16", "fp16", log),
              gen_tokens=SLOW_GEN_TOKENS),
        Entry("genai-int4-cpu", "genai", "raw openvino-genai on the cpu preset's IR, glm4-edge's properties",
              "openvino-genai", cpu_preset, properties=dict(EDGE_CPU_PROPERTIES)),
        Entry("genai-int4-cpu-plain", "genai", "raw openvino-genai on the cpu preset's IR, OpenVINO's defaults",
              "openvino-genai", cpu_preset),
        Entry("genai-optimum-int4", "genai", "raw openvino-genai on optimum-cli's default INT4",
              "openvino-genai", optimum),
        Entry("optimum-int4", "optimum", "optimum-intel OVModelForCausalLM, default INT4", "optimum-intel",
              optimum),
        Entry("torch-bf16", "torch", "PyTorch bf16 (transformers generate)", "PyTorch",
              lambda: bench_models.checkpoint(layers, log), gen_tokens=TORCH_GEN_TOKENS,
              prompt_lengths=TORCH_PROMPT_LENGTHS),
        Entry("llama-q4_0", "llama", "llama.cpp Q4_0 (llama-cpp-python)", "llama.cpp", gguf("q4_0")),
        Entry("llama-q4_k_m", "llama", "llama.cpp Q4_K_M (llama-cpp-python)", "llama.cpp", gguf("q4_k_m")),
        # llama.cpp's OpenMP threads spin at barriers: when another process holds one of two cores,
        # two threads wait on each other, and one thread is faster. Both are shown.
        Entry("llama-q4_0-1t", "llama", "llama.cpp Q4_0, 1 thread", "llama.cpp", gguf("q4_0"), threads=1),
    ]
    return found


def select(all_entries: list[Entry], only: str | None, skip: str | None) -> list[Entry]:
    def matches(entry: Entry, words: set[str]) -> bool:
        return bool(words & {entry.key, entry.kind, entry.key.rsplit("-", 1)[-1]})

    chosen = all_entries
    if only:
        words = {w.strip() for w in only.split(",") if w.strip()}
        chosen = [e for e in chosen if matches(e, words)]
    if skip:
        words = {w.strip() for w in skip.split(",") if w.strip()}
        chosen = [e for e in chosen if not matches(e, words)]
    return chosen


# --- bytes read per decoded token -----------------------------------------------------------------

def ov_weight_bytes(folder: Path) -> dict[str, int]:
    """Constant bytes of the IR, with the embedding table (what a Gather reads rows from) apart."""
    import openvino as ov

    model = ov.Core().read_model(folder / "openvino_model.xml")
    sizes: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            sizes[op.get_friendly_name()] = op.get_byte_size()
    embedding: set[str] = set()
    for op in model.get_ops():
        if op.get_type_name() != "Gather":
            continue
        stack, seen = [op.input_value(0).get_node()], set()
        while stack:
            node = stack.pop()
            if node.get_friendly_name() in seen:
                continue
            seen.add(node.get_friendly_name())
            if node.get_type_name() == "Constant":
                embedding.add(node.get_friendly_name())
            elif node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Unsqueeze"):
                stack.extend(value.get_node() for value in node.input_values())
    embedded = sum(sizes[name] for name in embedding if sizes[name] >= BIG_CONSTANT_BYTES)
    total = sum(sizes.values())
    return {"total": total, "embedding": embedded, "per_token": total - embedded}


def gguf_weight_bytes(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    total = sum(int(t.n_bytes) for t in reader.tensors)
    embedded = sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    return {"total": total, "embedding": embedded, "per_token": total - embedded}


def safetensors_weight_bytes(folder: Path) -> dict[str, int]:
    total = embedded = 0
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            size = info["data_offsets"][1] - info["data_offsets"][0]
            total += size
            if name.endswith("embed_tokens.weight"):
                embedded += size
    return {"total": total, "embedding": embedded, "per_token": total - embedded}


def weight_bytes(entry: Entry, path: Path) -> dict[str, int]:
    if entry.kind == "llama":
        return gguf_weight_bytes(path)
    if entry.kind == "torch":
        return safetensors_weight_bytes(path)
    return ov_weight_bytes(path)


# --- running ----------------------------------------------------------------------------------------

def summarize(entry: Entry, path: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the quiet rounds (see bench_runner.quiet_rounds); min-max over all of them."""
    weights = weight_bytes(entry, path)
    quiet = quiet_rounds(runs)
    all_rates = [1.0 / r["decode"]["tpot_s"] for r in runs if r["decode"]["tpot_s"]]
    tpot = median([r["decode"]["tpot_s"] for r in quiet])
    lengths = sorted({int(k) for r in runs for k in r["ttft_s"]})
    ttft = {str(n): median([r["ttft_s"].get(str(n)) for r in quiet]) for n in lengths}
    longest = str(lengths[-1]) if lengths else None
    return {
        "key": entry.key, "kind": entry.kind, "label": entry.label, "family": entry.family,
        "path": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
        "properties": entry.properties, "rounds": len(runs), "quiet_rounds": len(quiet),
        "contention": [round(r.get("contention", 0.0), 3) for r in runs], "gen_tokens": entry.gen_tokens,
        "tokens_per_s": 1.0 / tpot if tpot else None, "tokens_per_s_min": min(all_rates, default=None),
        "tokens_per_s_max": max(all_rates, default=None), "tpot_s": tpot, "ttft_s": ttft,
        "prefill_tokens_per_s": int(longest) / ttft[longest] if longest and ttft[longest] else None,
        "prefill_at": int(longest) if longest else None,
        "peak_rss": max(r["peak_rss"] for r in runs), "load_s": median([r["load_s"] for r in runs]),
        "weights": weights,
        "notes": sorted({n for r in runs for n in r.get("notes", [])}),
    }


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def summarize_paired(raw: dict[str, Any], per_token_bytes: dict[str, int]) -> dict[str, Any]:
    """Per engine: median tokens/s, ratio to the baseline cycle by cycle, roofline share at each moment."""
    rates, bandwidth = raw["rates"], raw["bandwidth"]
    engines = {}
    for key, values in rates.items():
        shares = [per_token_bytes[key] * rate / bw for rate, bw in zip(values, bandwidth, strict=True)]
        entry = {"tokens_per_s": statistics.median(values), "quartiles": _quartiles(values),
                 "roofline": statistics.median(shares), "bytes_per_token": per_token_bytes[key],
                 "contention": statistics.median(raw["contention"][key]), "values": values}
        if BASELINE in rates and key != BASELINE:
            ratios = [a / b for a, b in zip(values, rates[BASELINE], strict=True)]
            entry["vs_baseline"] = _quartiles(ratios)
        engines[key] = entry
    return {"engines": engines, "cycles": len(bandwidth), "gen_tokens": PAIRED_GEN_TOKENS,
            "bandwidth_gb_s": _quartiles([b / 1e9 for b in bandwidth]), "baseline": BASELINE}


def compare(args: argparse.Namespace, log) -> dict[str, Any]:
    chosen = select(entries(args.layers, log), args.only, args.skip)
    if not chosen:
        raise SystemExit("no engine left after --only/--skip")
    paths = {}
    for entry in chosen:  # build everything first: conversions must not overlap the measurements
        try:
            paths[entry.key] = entry.build()
        except Exception as error:  # one engine that cannot be built must not sink the comparison
            log(f"{entry.key}: cannot build ({type(error).__name__}: {str(error)[:300]}); left out")
    bench_models.drop_f16_gguf(args.layers)
    chosen = [e for e in chosen if e.key in paths]
    runs: dict[str, list[dict[str, Any]]] = {e.key: [] for e in chosen}
    bandwidths = []
    started = time.perf_counter()
    for round_index in range(args.rounds):
        # Measured every round: other tenants of the memory system come and go, and the roofline
        # should be what this machine could do at its best, not at a busy moment.
        bandwidths.append(memory_bandwidth())
        log(f"round {round_index + 1}: read bandwidth {bandwidths[-1]['best'] / 1e9:.1f} GB/s")
        shift = round_index % len(chosen)
        order = chosen[shift:] + chosen[:shift]  # rotate: no engine always runs first or right after another
        for entry in order:
            spec = EngineSpec(key=entry.key, kind=entry.kind, path=str(paths[entry.key]), label=entry.label,
                              properties=entry.properties, threads=entry.threads or args.threads,
                              prompt_lengths=list(entry.prompt_lengths or args.prompt_lengths),
                              decode_prompt=args.decode_prompt, gen_tokens=entry.gen_tokens,
                              seed=1000 * round_index + len(runs[entry.key]))
            if args.wait_quiet:
                wait_for_quiet(args.wait_quiet, log)
            result = run_engine(spec, log)
            if result is not None:
                runs[entry.key].append(result)
                decode = result["decode"]
                rate = 1 / decode["tpot_s"] if decode["tpot_s"] else float("nan")
                log(f"  round {round_index + 1} {entry.key}: {rate:.2f} tok/s, TTFT "
                    + ", ".join(f"{k}:{v:.2f}s" for k, v in result["ttft_s"].items())
                    + f", others used {result['contention']:.0%} of the CPU ({result['wall_s']:.0f} s)")
    paired = None
    paired_keys = [k for k in (args.paired.split(",") if args.paired else []) if k in paths]
    if len(paired_keys) > 1 and args.paired_cycles > 0:
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet, log)
        log(f"paired decode: {', '.join(paired_keys)}")
        by_key = {e.key: e for e in chosen}
        specs = [EngineSpec(key=k, kind=by_key[k].kind, path=str(paths[k]), properties=by_key[k].properties,
                            threads=by_key[k].threads or args.threads, decode_prompt=args.decode_prompt,
                            gen_tokens=PAIRED_GEN_TOKENS) for k in paired_keys]
        raw = paired_decode(specs, args.paired_cycles, args.decode_prompt, PAIRED_GEN_TOKENS, log)
        per_token = {k: weight_bytes(by_key[k], paths[k])["per_token"] for k in paired_keys}
        paired = summarize_paired(raw, per_token)
    measured_s = time.perf_counter() - started
    bandwidths.append(memory_bandwidth())
    best = max(b["best"] for b in bandwidths)
    results = [summarize(e, paths[e.key], runs[e.key]) for e in chosen if runs[e.key]]
    return {"layers": args.layers, "shape": args.shape, "machine": machine(),
            "bandwidth": {"best": best, "method": bandwidths[0]["method"],
                          "samples_gb_s": [round(b["best"] / 1e9, 1) for b in bandwidths]},
            "rounds": args.rounds, "measure_s": measured_s, "paired": paired,
            "prompt_lengths": list(args.prompt_lengths), "decode_prompt": args.decode_prompt,
            "command": "python benchmarks/compare_engines.py " + " ".join(sys.argv[1:]), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS, help="GLM-4-9B layers kept (default 8)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds (default 3)")
    parser.add_argument("--prompt-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(DEFAULT_PROMPT_LENGTHS),
                        help="TTFT prompt lengths (default 128,512,1024)")
    parser.add_argument("--decode-prompt", type=int, default=DEFAULT_PROMPT_LENGTHS[0],
                        help="prompt length before the measured decode (default 128)")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch/llama.cpp (default: all)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each engine run, wait up to this long for other processes to go idle")
    parser.add_argument("--paired", default=",".join(DEFAULT_PAIRED),
                        help="engines whose decode is also measured side by side (comma-separated keys; "
                             "'' for none)")
    parser.add_argument("--paired-cycles", type=int, default=DEFAULT_PAIRED_CYCLES,
                        help=f"alternation cycles of the paired decode (default {DEFAULT_PAIRED_CYCLES})")
    parser.add_argument("--only", help="comma-separated engine keys or kinds to run")
    parser.add_argument("--skip", help="comma-separated engine keys or kinds to leave out (e.g. torch,fp16)")
    parser.add_argument("--build-only", action="store_true", help="build the models, measure nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite docs from the saved results")
    parser.add_argument("--no-docs", action="store_true", help="save results under benchmarks/out only")
    parser.add_argument("--docs", type=Path, default=DOCS, help="folder for benchmarks.md and the plots")
    parser.add_argument("--shape", choices=bench_models.SHAPES, default=bench_models.SHAPES[0],
                        help="glm4-9b (default) or tiny (a quick check that everything runs)")
    parser.add_argument("--work", type=Path, help="folder for models and results (default benchmarks/out)")
    args = parser.parse_args(argv)
    bench_models.configure(args.shape, args.work)
    if args.rounds < 1 or args.layers < 1:
        parser.error("--rounds and --layers must be at least 1")
    if args.decode_prompt not in args.prompt_lengths:
        args.prompt_lengths = sorted({*args.prompt_lengths, args.decode_prompt})

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    saved = bench_models.layer_folder(args.layers) / "results.json"
    if args.build_only:
        for entry in select(entries(args.layers, log), args.only, args.skip):
            entry.build()
        bench_models.drop_f16_gguf(args.layers)
        return 0
    if args.report_only:
        report = json.loads(saved.read_text())
    else:
        report = compare(args, log)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(report, indent=2))
        log(f"results in {saved}")
    if not args.no_docs:
        import bench_report

        folder = bench_models.layer_folder(args.layers)
        tuning = folder / "tuning.json"
        batches = [json.loads(path.read_text()) for path in sorted(folder.glob("paired-*.json"))]
        bench_report.write(report, json.loads(tuning.read_text()) if tuning.is_file() else None, args.docs,
                           batches)
        log(f"wrote {args.docs / 'benchmarks.md'} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
