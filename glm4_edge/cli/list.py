"""`glm4-edge list`: the models in the store (name, family, format, quality, size, device preset, date)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .. import store

COLUMNS = ("NAME", "FAMILY", "FORMAT", "QUALITY", "SIZE", "DEVICE", "CREATED")
GAP = "   "


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("list", help="list the models in the store",
                                   description=f"List the models in the store (${store.HOME_ENV}, default "
                                               f"{store.home()}).")
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    parser.set_defaults(run=run)


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def run(args: argparse.Namespace) -> int:
    freed = store.clean_stale()
    if freed:
        print(f"glm4-edge list: removed unfinished work left by stopped glm4-edge processes ({human_size(freed)})",
              file=sys.stderr)
    entries = store.entries()
    if args.json:
        for entry in entries:
            print(json.dumps({**asdict(entry), "path": str(entry.path)}, ensure_ascii=False))
        return 0
    rows = [(e.name, e.family, e.weight_format, e.quality or "-", human_size(e.size_bytes), e.device,
             e.created[:10]) for e in entries]
    # Plain aligned columns, like `ollama list`: greppable, and never wrapped to a terminal's width.
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for row in [COLUMNS, *rows]:
        print(GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not entries:
        print(f"glm4-edge list: no models in {store.home()} yet; `glm4-edge run CHECKPOINT` or `glm4-edge convert "
              "CHECKPOINT` adds one, `glm4-edge unpack FILE` brings one from another machine", file=sys.stderr)
    return 0
