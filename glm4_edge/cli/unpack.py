"""`glm4-edge unpack FILE`: bring a `glm4-edge pack` archive into the store, every file verified first."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..bundle import unpack
from .list import human_size


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "unpack", help="add a `glm4-edge pack` archive to the store, verified",
        description="Extract a `glm4-edge pack` archive into the store and check the SHA-256 of every file "
                    "before it appears there; a damaged or truncated archive adds nothing.")
    parser.add_argument("archive", type=Path, help="the .tar file made by `glm4-edge pack`")
    parser.add_argument("--name", help="store name (default: the name it was packed under)")
    parser.add_argument("--force", action="store_true",
                        help="replace a store entry of the same name (only after the new copy is verified)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    with err.status(f"unpacking {args.archive}") as status:
        result = unpack(args.archive, name=args.name, force=args.force, progress=status.update)
    checked = "every SHA-256 checked" if result.manifest_hashes else \
        "every SHA-256 checked against the archive (the model itself records none: `verify` cannot check it later)"
    print(f"unpacked {result.name} into {result.folder}: {result.files} files, {human_size(result.bytes)}, "
          f"{checked} ({result.seconds:.1f} s); try: glm4-edge run {result.name}")
    return 0
