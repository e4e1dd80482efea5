"""`glm4-edge info MODEL`: what a converted model folder holds (its manifest)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import store
from ..errors import ModelFormatError
from ..manifest import read_manifest


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show how a converted model was made")
    parser.add_argument("model", type=Path, help="converted model folder or store name")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(run=run)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _group_size(weight_format: str, group_size: int) -> str:
    """Group size as users read it: only INT4 weights are grouped; -1 is NNCF's code for channel-wise."""
    if not weight_format.startswith("int4"):
        return "-"
    return "channel-wise" if group_size == -1 else str(group_size)


def _device_choice(folder: Path) -> str:
    from ..device_bench import recorded

    choice = recorded(folder)
    if choice is None:
        return "not measured (glm4-edge devices --bench MODEL)"
    return (f"{choice.device}{' + draft' if choice.draft else ''}: {choice.tokens_per_s:.1f} tok/s decode, "
            f"measured {choice.measured[:10]} by glm4-edge devices --bench")


def run(args: argparse.Namespace) -> int:
    folder = store.resolve(args.model)
    if not store.is_model_folder(folder):
        raise ModelFormatError(f"{folder} is not a converted model folder (no openvino_model.xml); if it is a "
                               f"checkpoint, convert it first: glm4-edge convert {folder}")
    manifest = read_manifest(folder)
    if manifest is None:
        raise ModelFormatError(f"{folder} has no glm4_edge.json (converted by another tool); it still loads, "
                               "but reconvert with `glm4-edge convert` to record how it was made")
    if args.json:
        print(json.dumps(asdict(manifest), indent=2, ensure_ascii=False))
        return 0
    console = Console()
    c = manifest.compression
    rows = [
        ("name", manifest.name), ("family", manifest.family), ("source", str(manifest.source.get("id", ""))),
        ("revision", str(manifest.source.get("revision") or manifest.source.get("content_hash", ""))),
        ("adapter", str(manifest.source.get("adapter") or "-")),
        ("target device", manifest.target_device), ("weights", c.weight_format),
        ("group size", _group_size(c.weight_format, c.group_size)), ("ratio", _shown(c.ratio)),
        ("symmetric", _shown(c.sym)),
        ("all layers", _shown(c.all_layers)), ("awq / scale estimation", f"{c.awq} / {c.scale_estimation}"),
        ("preset", manifest.preset or "-"), ("quality", quality_line(c.weight_error, c.weight_format)),
        ("context", str(manifest.context_length)), ("reasoning (Z1)", str(manifest.reasoning)),
        *([("images (GLM-4V)", vision_line(manifest.vision))] if manifest.vision else []),
        *([("NPU static shape", f"MAX_PROMPT_LEN {manifest.npu.get('max_prompt_len')}, MIN_RESPONSE_LEN "
                                f"{manifest.npu.get('min_response_len')}")] if manifest.npu else []),
        ("size on disk", f"{folder_bytes(folder) / 1e6:,.1f} MB"),
        ("created", manifest.created),
        ("device for AUTO", _device_choice(folder)),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
    ]
    table = Table(show_header=False, title=str(folder))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    bits = Table(title="weights by precision")
    for column in ("precision", "tensors", "% of weights"):
        bits.add_column(column)
    for row in c.bits_table:
        bits.add_row(row["precision"], str(row["tensors"]), f"{row['percent']:.1f}")
    console.print(bits)
    return 0


def vision_line(vision: dict) -> str:
    """'1120x1120, 1600 image tokens, vision encoder int8' from the manifest's `vision` entry."""
    size = vision.get("image_size", "?")
    symmetric = " symmetric" if vision.get("symmetric") else ""
    return (f"{size}x{size}, {vision.get('image_tokens', '?')} image tokens, vision encoder "
            f"{vision.get('weight_format', '?')}{symmetric}")


def _shown(value: object) -> str:
    """A compression field as users read it: "-" where it does not apply (fp16 weights record None)."""
    return "-" if value is None else str(value)


def quality_line(weight_error: dict, weight_format: str = "") -> str:
    """'about Q4_K_M error or better (weight relative MSE 0.0031, 0.38x Q4_0 rounding)', or '-'."""
    if weight_format == "fp16":
        return "unquantized (fp16 weights: no rounding error measured)"
    if not weight_error:
        return "-"
    return (f"{weight_error['quality_class']} (weight relative MSE {weight_error['mean_relative_mse']:.4g}, "
            f"{weight_error['ratio_to_q4_0']:.2f}x Q4_0 rounding of the same weights)")
