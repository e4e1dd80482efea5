"""docs/benchmarks.md and the two plots, from compare_engines.py's (and tune_cpu.py's) saved results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GIB = 2**30
BASELINE = "llama-q4_0"
FAMILY_COLORS = {"glm4-edge": "#0068b5", "openvino-genai": "#6aa9e9", "optimum-intel": "#9b59b6",
                 "PyTorch": "#ee4c2c", "llama.cpp": "#555555"}
PLOT_DPI = 110


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio(value: float | None, base: float | None) -> str:
    return "–" if not value or not base else f"{value / base:.2f}x"


def roofline(report: dict[str, Any], r: dict[str, Any]) -> float | None:
    """Share of the measured read bandwidth that the engine's weight reads use while decoding."""
    return r["weights"]["per_token"] / report["bandwidth"]["best"] / r["tpot_s"] if r["tpot_s"] else None


def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (f"{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['ram_gib']} GiB RAM, {m['os']}; "
            f"measured {m['date']}; {versions}")


def results_table(report: dict[str, Any]) -> list[str]:
    results = sorted(report["results"], key=lambda r: -(r["tokens_per_s"] or 0))
    base = next((r for r in results if r["key"] == BASELINE), None)
    lengths = report["prompt_lengths"]
    header = (["Engine · format", "Decode tok/s (min–max)", "ms/token", f"vs {BASELINE}", "Roofline",
               "GB read/token"] + [f"TTFT {n}" for n in lengths]
              + [f"Prefill tok/s @{lengths[-1]}", "Peak RSS GiB", "Load s", "Others' CPU"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        bold = "**" if r["key"] == "edge-int4-cpu" else ""
        cells = [f"{bold}{r['label']}{bold} (`{r['key']}`)",
                 f"{bold}{_fmt(r['tokens_per_s'])}{bold} ({_fmt(r['tokens_per_s_min'])}–"
                 f"{_fmt(r['tokens_per_s_max'])})",
                 _fmt(r["tpot_s"] * 1000 if r["tpot_s"] else None, 1),
                 _ratio(r["tokens_per_s"], base and base["tokens_per_s"]),
                 _fmt(roofline(report, r) * 100 if r["tpot_s"] else None, 0, "%"),
                 _fmt(r["weights"]["per_token"] / 1e9, 2)]
        cells += [_fmt(r["ttft_s"].get(str(n)), 2, " s") for n in lengths]
        prefill = r["prefill_tokens_per_s"] if r.get("prefill_at") == lengths[-1] else None
        busy = sorted(r.get("contention") or [0.0])
        cells += [_fmt(prefill, 0), _fmt(r["peak_rss"] / GIB, 2), _fmt(r["load_s"], 1),
                  f"{busy[len(busy) // 2]:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_table(report: dict[str, Any]) -> list[str]:
    paired = report["paired"]
    labels = {r["key"]: r["label"] for r in report["results"]}
    engines = sorted(paired["engines"].items(), key=lambda item: -item[1]["tokens_per_s"])
    header = ["Engine", "Decode tok/s: median (quartiles)", f"vs {paired['baseline']}: median (quartiles)",
              "Roofline share", "GB read/token", "Others' CPU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, e in engines:
        q1, q2, q3 = e["quartiles"]
        ratio = e.get("vs_baseline")
        lines.append("| " + " | ".join([
            f"{labels.get(key, key)} (`{key}`)", f"{q2:.2f} ({q1:.2f}–{q3:.2f})",
            f"{ratio[1]:.2f}x ({ratio[0]:.2f}–{ratio[2]:.2f})" if ratio else "1.00x",
            f"{e['roofline']:.0%}", f"{e['bytes_per_token'] / 1e9:.2f}", f"{e['contention']:.0%}"]) + " |")
    return lines


def tuning_table(tuning: dict[str, Any]) -> list[str]:
    rows = sorted(tuning["results"], key=lambda r: -(r["tokens_per_s"] or 0))
    base = next((r for r in rows if r["key"] == tuning.get("baseline")), None)
    header = ["Setting", "Model", "Decode tok/s (min–max)", "vs default", f"TTFT {tuning['prompt']} s",
              "Prefill tok/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"{r['label']} (`{r['key']}`)", r["model"],
            f"{_fmt(r['tokens_per_s'])} ({_fmt(r['tokens_per_s_min'])}–{_fmt(r['tokens_per_s_max'])})",
            _ratio(r["tokens_per_s"], base and base["tokens_per_s"]), _fmt(r["ttft_s"], 2),
            _fmt(r["prefill_tokens_per_s"], 0)]) + " |")
    return lines


def plot_decode(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(report["results"], key=lambda r: r["tokens_per_s"] or 0)
    labels = [r["label"] for r in results]
    values = [r["tokens_per_s"] or 0 for r in results]
    low = [v - (r["tokens_per_s_min"] or v) for v, r in zip(values, results, strict=True)]
    high = [(r["tokens_per_s_max"] or v) - v for v, r in zip(values, results, strict=True)]
    colors = [FAMILY_COLORS.get(r["family"], "#999999") for r in results]
    figure, axis = plt.subplots(figsize=(10, 0.42 * len(results) + 1.6))
    axis.barh(labels, values, xerr=[low, high], color=colors, capsize=3)
    for index, (value, r) in enumerate(zip(values, results, strict=True)):
        share = f"  {value:.1f}" + (f"  ({roofline(report, r):.0%} of roofline)" if r["tpot_s"] else "")
        axis.text(max(value, r["tokens_per_s_max"] or value), index, share, va="center", fontsize=8)
    axis.set_xlabel("decode tokens/s (median over rounds; bars: min–max)")
    axis.set_xlim(0, max(values) * 1.45)
    axis.set_title(f"GLM-4-9B-shaped model, {report['layers']} layers, "
                   f"{report['machine']['cores']} CPU cores\n"
                   f"{report['machine']['cpu']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)


def plot_ttft(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    axis.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # a dozen engines: tab10 would repeat colours
    results = sorted(report["results"], key=lambda r: -(r["tokens_per_s"] or 0))
    for r in results:
        points = sorted((int(n), s) for n, s in r["ttft_s"].items() if s)
        if not points:
            continue
        style = "-" if r["family"] in ("glm4-edge", "llama.cpp") else "--"
        axis.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=r["label"],
                  color=FAMILY_COLORS.get(r["family"]) if r["key"] in ("edge-int4-cpu", BASELINE) else None,
                  linewidth=2.5 if r["key"] in ("edge-int4-cpu", BASELINE) else 1.2)
    axis.set_xlabel("prompt length (tokens)")
    axis.set_ylabel("time to first token (s)")
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.set_title(f"TTFT vs prompt length, {report['layers']}-layer GLM-4-9B-shaped model, "
                   f"{report['machine']['cores']} cores", fontsize=10)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)


def paired_section(report: dict[str, Any]) -> list[str]:
    paired = report["paired"]
    q1, q2, q3 = paired["bandwidth_gb_s"]
    return [
        "### Decode side by side",
        "",
        f"The engines below stayed loaded in parallel processes and took turns decoding "
        f"{paired['gen_tokens']} tokens, {paired['cycles']} cycles, each cycle with a read-bandwidth sample "
        f"(median {q2:.1f} GB/s, quartiles {q1:.1f}–{q3:.1f}): a slow change of the machine hits all of them "
        "alike, so the ratios are the most trustworthy figures here. Roofline share is taken against the "
        "bandwidth sample of the same cycle.",
        "",
        *paired_table(report),
        "",
    ]


FINDINGS_MARKER = "<!-- findings: written by hand, kept when the tables are regenerated -->"


def paired_tuning_tables(batches: list[dict[str, Any]]) -> list[str]:
    lines = []
    for batch in batches:
        bandwidth = sorted(batch["bandwidth_gb_s"])
        lines += [f"Side by side, {batch['cycles']} cycles, ratios against `{batch['baseline']}` cycle by "
                  f"cycle (bandwidth samples {bandwidth[0]:.0f}–{bandwidth[-1]:.0f} GB/s):", "",
                  "| Setting | Decode tok/s (min–max) | vs first: median (per-cycle range) |",
                  "|---|---|---|"]
        for r in sorted(batch["results"], key=lambda r: -r["tokens_per_s"]):
            low, high = r["vs_first_range"]
            lines.append(f"| {r['label']} (`{r['key']}`) | {r['tokens_per_s']:.2f} "
                         f"({r['tokens_per_s_min']:.1f}–{r['tokens_per_s_max']:.1f}) | "
                         f"{r['vs_first']:.2f}x ({low:.2f}–{high:.2f}) |")
        lines.append("")
    return lines


def write(report: dict[str, Any], tuning: dict[str, Any] | None, docs: Path,
          paired_tunings: list[dict[str, Any]] | None = None) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    plot_decode(report, docs / "bench-decode.png")
    plot_ttft(report, docs / "bench-ttft.png")
    target = docs / "benchmarks.md"
    kept = ""
    if target.is_file() and FINDINGS_MARKER in target.read_text():
        kept = target.read_text().split(FINDINGS_MARKER, 1)[1]
    bandwidth = report["bandwidth"]
    samples = ", ".join(f"{v:.1f}" for v in bandwidth["samples_gb_s"])
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine_line(report)}.",
        "",
        (f"Model: GLM-4-9B's real shapes (hidden 4096, FFN 13696, 32 heads, 2 KV heads, head dim 128, "
         f"vocabulary 151552) with {report['layers']} of its 40 layers and random bf16 weights. "
         if report.get("shape", "glm4-9b") == "glm4-9b" else
         f"Model: the test suite's tiny GLM-4 shape, {report['layers']} layers (a smoke run: not a "
         "measurement of anything). ") +
        f"Decode: "
        f"{report['decode_prompt']}-token prompt, then greedy tokens with EOS ignored; TTFT at "
        f"{', '.join(str(n) for n in report['prompt_lengths'])} tokens with a fresh random prompt each time. "
        f"Each engine ran {report['rounds']} times in its own process, alternating with the others. Medians "
        "over the rounds in which other processes used under 15% of the CPU (all rounds if none was that "
        "quiet); min–max over all rounds. *Others' CPU* is the median share of the cores that other "
        "processes (or the hypervisor) took while the engine measured.",
        "",
        f"Memory read bandwidth ({bandwidth['method']}, 1 GiB, best of 1 thread and one per core; measured "
        f"before every round and at the end: {samples} GB/s): **{bandwidth['best'] / 1e9:.1f} GB/s**. "
        "Roofline = weight bytes read per token (every weight but the embedding table, of which decode "
        "reads one row; the KV cache adds under 1% at these lengths) / bandwidth / time per token.",
        "",
        f"Reproduce: `{report['command']}` (models are built and cached under benchmarks/out/; "
        f"measuring took {report['measure_s'] / 60:.0f} min).",
        "",
        *results_table(report),
        "",
        *(paired_section(report) if report.get("paired") else []),
        "![decode tokens/s](bench-decode.png)",
        "",
        "![TTFT vs prompt length](bench-ttft.png)",
        "",
    ]
    if tuning or paired_tunings:
        lines += ["## CPU compression and runtime settings", ""]
    if paired_tunings:
        lines += ["`python benchmarks/tune_cpu.py --layers 8 --paired 12 --only A,B,...`: each batch loaded "
                  "side by side and alternated, the most reliable comparison on a shared machine.", "",
                  *paired_tuning_tables(paired_tunings)]
    if tuning:
        lines += ["The broad sweep (`python benchmarks/tune_cpu.py --layers 8 --rounds 3`): one process per "
                  "setting and round, so drifting machine conditions between runs blur differences under "
                  "~20%; the side-by-side batches above decide those. " + tuning.get("description", ""), "",
                  *tuning_table(tuning), ""]
    text = "\n".join(lines) + "\n" + FINDINGS_MARKER + (kept or "\n")
    target.write_text(text)
