"""`glm4-edge eval MODEL`: task accuracy and agreement with a reference model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import store
from ..errors import BadParameterError
from .common import add_property_arg, properties


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="measure task accuracy and drift from a reference model")
    parser.add_argument("model", type=Path, help="converted model folder or store name (or a Hugging Face checkpoint)")
    parser.add_argument("--reference", type=Path,
                        help="the original Hugging Face checkpoint or another converted model")
    parser.add_argument("--tasks", default="builtin",
                        help="'builtin' (the tiny model's held-out tasks) or a .jsonl of {prompt, expected}")
    parser.add_argument("--cases", type=int, default=100, help="builtin cases per task (default 100)")
    parser.add_argument("--device", default="CPU")
    add_property_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    if args.cases < 1:
        raise BadParameterError("--cases must be at least 1", "cases")
    model = store.find(args.model) or args.model  # store names as well as folders
    reference = (store.find(args.reference) or args.reference) if args.reference is not None else None
    report = evaluate(model, reference, args.tasks, args.cases, args.device, properties(args))
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return 0
    console = Console()
    table = Table(title=f"{args.model}" + (f" vs {args.reference}" if args.reference else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for score in report.tasks:
        table.add_row(f"{score.task} accuracy", f"{score.accuracy:.1%} ({score.correct}/{score.total})")
    if report.agreement:
        a = report.agreement
        table.add_row("top-1 agreement", f"{a.top1_agreement:.1%}")
        table.add_row("mean KL divergence", f"{a.mean_kl:.4f}")
        table.add_row("relative logit RMSE", f"{a.relative_logit_rmse:.4f}")
        ratio = f"{a.perplexity_ratio:.3f} ({a.perplexity:.2f} / {a.reference_perplexity:.2f})"
        table.add_row("perplexity ratio", ratio)
        table.add_row("answer similarity", f"{a.answer_similarity:.1%}")
    if report.weight_error:
        w = report.weight_error
        table.add_row("weight relative MSE: mean", f"{w['mean_relative_mse']:.5f}")
        table.add_row("weight relative MSE: worst", f"{w['worst_relative_mse']:.5f} ({w['worst_matrix']})")
        table.add_row("weight error vs Q4_0 rounding", f"{w['ratio_to_q4_0']:.2f}x: {w['quality_class']}")
    table.add_row("size on disk", f"{report.size_bytes / 1e6:,.1f} MB")
    if report.decode_tokens_per_s:
        table.add_row("decode tokens/s", f"{report.decode_tokens_per_s:,.0f}")
    console.print(table)
    return 0
