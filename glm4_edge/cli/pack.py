"""`glm4-edge pack MODEL -o FILE`: one archive to carry a converted model to an offline machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from ..bundle import pack
from .list import human_size


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pack", help="write a model to one archive for an offline machine (`glm4-edge unpack` there)",
        description="Write a converted model (folder or store name) to one tar archive with the SHA-256 of every "
                    "file; `glm4-edge unpack FILE` on the other machine checks them all.")
    parser.add_argument("model", help="converted model folder or store name")
    parser.add_argument("-o", "--output", type=Path, help="archive file or folder (default ./NAME.tar)")
    parser.add_argument("--force", action="store_true", help="replace an existing archive")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    with err.status(f"packing {args.model}") as status:
        result = pack(args.model, args.output, force=args.force, progress=status.update)
    if not result.manifest_hashes:
        print(f"glm4-edge pack: note: {result.name} records no file hashes of its own (converted by an older "
              "glm4-edge or another tool); the archive's index still lets `unpack` check the copy", file=sys.stderr)
    print(f"packed {result.name}: {result.files} files (manifest included), {human_size(result.bytes)} -> "
          f"{result.archive} ({result.seconds:.1f} s); on the other machine: glm4-edge unpack {result.archive.name}")
    return 0
