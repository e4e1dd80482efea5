"""`glm4-edge verify MODEL`: check every file of a converted model against the SHA-256 in its manifest.

Exit status: 0 verified, 1 not verifiable (no hashes recorded: converted by an older glm4-edge or
another tool), 2 failed (the line names the file) or bad input.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ..integrity import require_verified
from ..loading import check_model_folder

EXIT_NOT_VERIFIABLE = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check a model's files against the SHA-256 in its manifest",
                                   description="Hash every file of a converted model (folder or store name) and "
                                               "compare with its manifest. Exit 0: verified; 1: not verifiable "
                                               "(no hashes recorded); 2: damaged (the file is named).")
    parser.add_argument("model", help="converted model folder or store name")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = check_model_folder(args.model)
    with Console(stderr=True).status(f"verifying {folder}") as status:
        report = require_verified(folder, progress=status.update)
    if not report.verifiable:
        print(f"{folder}: not verifiable: its manifest records no file hashes (converted by an older glm4-edge or "
              "by another tool); it still loads. Reconvert it with `glm4-edge convert` to add them")
        return EXIT_NOT_VERIFIABLE
    # The manifest holds the hashes, so it is the one file not checked against itself (`pack` counts it).
    print(f"{folder}: verified, {report.files} files, {report.bytes / 1e6:,.1f} MB match their SHA-256 "
          f"recorded in the manifest ({report.seconds:.1f} s, {report.mb_per_s:,.0f} MB/s)")
    return 0
