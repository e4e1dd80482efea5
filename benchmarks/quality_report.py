"""The quality tables and the speed-quality Pareto plot, from quality_sweep.py's results and decode speeds.

    python benchmarks/quality_report.py --speeds benchmarks/speeds.json --docs docs

Reads benchmarks/out/quality-<weights>-*.json (one per weight statistic) and a JSON of decode speeds
{name: {"decode": tok/s, "prefill": tok/s or null, "source": "where it was measured"}}; prints the
markdown for docs/benchmarks.md's "Quality" section and draws docs/bench-pareto.png (decode speed on
x, relative logit RMSE on y, one panel per weight statistic).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASELINE = "gguf-q4_0"
FLOOR = "gguf-q4_k_m"
ENGINE_COLORS = {"openvino": "#0068b5", "llama.cpp": "#555555"}


def load(out: Path) -> dict[str, dict[str, Any]]:
    """{weights: sweep result} for every quality-*.json under `out`."""
    found = {}
    for path in sorted(out.glob("quality-*.json")):
        data = json.loads(path.read_text())
        found[data["meta"]["weights"]] = data
    return found


def _mse(row: dict[str, Any]) -> float | None:
    return row["weight"]["mean_relative_mse"] if row.get("weight") else None


def _int8_share(row: dict[str, Any] | None) -> str:
    """Share of the measured weights stored in 8 bits (quality_sweep's `precisions`), or – when not recorded."""
    shares = (row or {}).get("precisions")
    if not shares:
        return "–"
    return f"{sum(v for k, v in shares.items() if k in ('u8', 'i8', 'q8_0')):.0f}%"


def table(sweeps: dict[str, dict[str, Any]], speeds: dict[str, dict[str, Any]]) -> list[str]:
    """One row per format: weight error and output error for each statistic, ratios to Q4_0, speed."""
    names: list[str] = []
    for sweep in sweeps.values():
        names += [n for n in sweep["rows"] if n not in names]
    header = ["Format"]
    for weights in sweeps:
        header += [f"{weights}: weight rel. MSE (x Q4_0)", f"{weights}: logit RMSE", f"{weights}: KL",
                   f"{weights}: top-1"]
    header += [f"INT8 share ({' / '.join(sweeps)})", "Decode tok/s", "Prefill tok/s", "≤ Q4_K_M error (both)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def order(name: str) -> float:
        first = next(iter(sweeps.values()))["rows"].get(name)
        return first["logit_rmse"] if first else 9.0

    for name in sorted(names, key=order):
        label = next(s["rows"][name]["label"] for s in sweeps.values() if name in s["rows"])
        cells = [f"{label} (`{name}`)"]
        floor_ok = True
        for sweep in sweeps.values():
            row, base, floor = (sweep["rows"].get(name), sweep["rows"].get(BASELINE), sweep["rows"].get(FLOOR))
            if row is None:
                cells += ["–"] * 4
                floor_ok = None if floor_ok is not False else False  # not measured on this statistic
                continue
            mse, base_mse = _mse(row), base and _mse(base)
            cells.append("–" if mse is None else f"{mse:.5f}" + (f" ({mse / base_mse:.2f}x)" if base_mse else ""))
            cells += [f"{row['logit_rmse']:.3f}", f"{row['kl']:.4f}", f"{row['top1']:.1%}"]
            if floor and floor_ok is not False:
                passed = row["logit_rmse"] <= floor["logit_rmse"] and (mse or 0.0) <= (_mse(floor) or 0.0)
                floor_ok = floor_ok if passed else False
        cells.append(" / ".join(_int8_share(sweep["rows"].get(name)) for sweep in sweeps.values()))
        speed = speeds.get(name, {})
        cells += [f"{speed['decode']:.1f}" if speed.get("decode") else "–",
                  f"{speed['prefill']:.0f}" if speed.get("prefill") else "–",
                  {True: "yes", None: "–"}.get(floor_ok, "no")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(sweeps: dict[str, dict[str, Any]], speeds: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sweeps), figsize=(6.2 * len(sweeps), 4.6), squeeze=False)
    for axis, (weights, sweep) in zip(axes[0], sweeps.items(), strict=True):
        for name, row in sweep["rows"].items():
            decode = speeds.get(name, {}).get("decode")
            if not decode:
                continue
            axis.scatter(decode, row["logit_rmse"], color=ENGINE_COLORS.get(row["engine"], "#999999"), s=36)
            axis.annotate(name.removeprefix("edge-").removeprefix("gguf-"), (decode, row["logit_rmse"]),
                          textcoords="offset points", xytext=(4, 3), fontsize=7)
        floor = sweep["rows"].get(FLOOR)
        if floor:
            axis.axhline(floor["logit_rmse"], color="#555555", linestyle=":", linewidth=1)
        axis.set_title(f"{weights} weights")
        axis.set_xlabel("decode tokens/s (higher is better)")
        axis.set_ylabel("relative logit RMSE vs the checkpoint (lower is better)")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=e) for e, c in ENGINE_COLORS.items()]
    axes[0][0].legend(handles=handles, loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--speeds", type=Path, required=True)
    parser.add_argument("--docs", type=Path, default=HERE.parent / "docs")
    parser.add_argument("--plot", default="bench-pareto.png", help="file name of the plot under --docs")
    args = parser.parse_args(argv)
    sweeps = load(args.out)
    speeds = json.loads(args.speeds.read_text())
    print("\n".join(table(sweeps, speeds)))
    plot(sweeps, speeds, args.docs / args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
