"""`glm4-edge rm NAME...`: delete models from the store (store entries only, never other folders)."""

from __future__ import annotations

import argparse

from .. import store
from ..errors import Glm4EdgeError
from .list import human_size


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("rm", help="remove models from the store")
    parser.add_argument("names", nargs="+", metavar="NAME", help="store name (see `glm4-edge list`)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    known = {entry.name for entry in store.entries()}
    missing = [name for name in args.names if name not in known]
    if missing:  # check every name before deleting any
        raise Glm4EdgeError(f"{missing[0]}: no such model in the store ({store.home()}); `glm4-edge list` shows "
                            "the names (rm deletes store entries only, never other folders)")
    for name in dict.fromkeys(args.names):
        freed = store.remove(name)
        print(f"removed {name} ({human_size(freed)})")
    return 0
