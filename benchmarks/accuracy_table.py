"""The README's accuracy table: the tiny GLM-4 in PyTorch and after each compression preset.

    python benchmarks/accuracy_table.py [--cases 200]

Converts models/glm4-tiny-chat with each preset into benchmarks/out/, runs `glm4_edge.evaluate`
against the PyTorch checkpoint on held-out cases, and prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glm4_edge.convert.export import ConvertOptions, convert

from glm4_edge.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "models" / "glm4-tiny-chat"
OUT = REPO / "benchmarks" / "out"
VARIANTS = {
    "FP16": {"weight_format": "fp16"},
    "INT8": {"weight_format": "int8"},
    "INT4 (CPU preset)": {},
    "INT4 (NPU preset)": {"device": "npu"},
    "INT4 + AWQ + scale estimation": {"awq": True, "scale_estimation": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="held-out cases per task")
    args = parser.parse_args()
    rows = ["| model | addition | recall | top-1 agreement | mean KL | ppl ratio | answer similarity | size | "
            "decode tok/s |", "|---|---|---|---|---|---|---|---|---|"]
    reference = evaluate(SOURCE, cases_per_task=args.cases)
    scores = {s.task: s.accuracy for s in reference.tasks}
    rows.append(f"| PyTorch reference (fp32) | {scores['addition']:.1%} | {scores['recall']:.1%} | - | - | - | - | "
                f"{reference.size_bytes / 1e6:.1f} MB | - |")
    for name, options in VARIANTS.items():
        folder = OUT / ("tiny-chat-" + name.lower().replace(" ", "-").replace("(", "").replace(")", "")
                        .replace("+", "").replace("--", "-"))
        convert(ConvertOptions(source=str(SOURCE), output=folder, force=True, **options))
        report = evaluate(folder, SOURCE, cases_per_task=args.cases)
        scores = {s.task: s.accuracy for s in report.tasks}
        a = report.agreement
        rows.append(f"| {name} | {scores['addition']:.1%} | {scores['recall']:.1%} | {a.top1_agreement:.1%} | "
                    f"{a.mean_kl:.4f} | {a.perplexity_ratio:.3f} | {a.answer_similarity:.1%} | "
                    f"{report.size_bytes / 1e6:.1f} MB | {report.decode_tokens_per_s:,.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
