"""`glm4-edge VERB ...`: one module per verb, each with `add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ..errors import Glm4EdgeError

VERBS = ("run", "convert", "chat", "generate", "list", "rm", "verify", "pack", "unpack", "devices", "info", "ui",
         "serve", "bench", "eval", "export_ovms")
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


_signalled = False


def _interrupt(signum, frame):
    # SIGTERM unwinds like Ctrl-C so `finally` blocks remove temporary folders. The flag remembers
    # it, since a library may turn the KeyboardInterrupt into an error of its own on the way up.
    global _signalled
    _signalled = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    # A shell starts background jobs with SIGINT ignored, and Python then never installs its handler.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return int(args.run(args) or 0)
    except Glm4EdgeError as error:
        if _signalled:  # a library turned the interrupt into an error, which was then reported as one
            print(f"glm4-edge {args.verb}: interrupted", file=sys.stderr)
            return 130
        print(f"glm4-edge {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"glm4-edge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if _signalled or _interrupted(error):
            print(f"glm4-edge {args.verb}: interrupted", file=sys.stderr)
            return 130
        raise


def _interrupted(error: BaseException | None) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
