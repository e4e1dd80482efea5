"""`glm4-edge VERB ...`: one module per verb, each with `add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ..errors import Glm4EdgeError

VERBS = ("convert", "chat", "generate", "devices", "info", "ui", "serve", "bench", "eval")
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2, like every other bad input."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glm4-edge", description="GLM-4 on Intel CPU, GPU and NPU with OpenVINO.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for verb in VERBS:
        try:
            module = importlib.import_module(f".{verb}", __package__)
        except ModuleNotFoundError as error:
            if error.name == f"{__package__}.{verb}":
                continue  # a verb not built yet
            raise
        module.add_parser(subparsers)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("glm4-edge")
    except metadata.PackageNotFoundError:
        return "dev"


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C so `finally` blocks remove temporary folders.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.run(args) or 0)
    except Glm4EdgeError as error:
        print(f"glm4-edge {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"glm4-edge {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
