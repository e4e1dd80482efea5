"""`glm4-edge ui MODEL`: chat with a converted model in the browser; `--kiosk` for a public terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import Glm4EdgeError
from .common import (
    add_model_args,
    add_sampling_args,
    add_verify_arg,
    is_loopback,
    load_model,
    sampling_options,
    verify_at_start,
)

# Duplicated from glm4_edge.ui on purpose: importing it loads Gradio, far too slow for `--help`.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_PORT = 65535
WAIT_POLL_S = 0.5


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ui", help="chat in the browser (Gradio); --kiosk for a locked-down public terminal",
        description="Serve a chat page for a converted model. Everything runs on this machine: the page "
                    "loads nothing from the internet and is never shared through a public link.")
    add_model_args(parser)
    add_sampling_args(parser)
    parser.add_argument("--system", default="",
                        help="system prompt (kiosk: fixed; system_prompt in --config wins)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                             "0.0.0.0 for the local network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--kiosk", action="store_true",
                        help="kiosk mode: no settings, no API page, big touch layout, idle reset")
    parser.add_argument("--config", type=Path, metavar="KIOSK.TOML",
                        help="kiosk texts, examples, language and idle timeout (see docs/kiosk.md)")
    parser.add_argument("--auth", metavar="USER:PASS", help="ask for this user name and password first")
    add_verify_arg(parser, "kiosk")
    parser.add_argument("--tools", choices=["python"], action="append", default=[],
                        help="python: let the model run Python code in a sandbox per tab (not with --kiosk; "
                             "see docs/documents.md)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Check everything the user typed before the slow part (Gradio import, model load).
    if args.config is not None and not args.kiosk:
        raise Glm4EdgeError("--config sets up kiosk mode; add --kiosk (or drop --config)")
    if args.kiosk and args.tools:
        raise Glm4EdgeError("--tools python is not available with --kiosk: a public terminal must not run code")
    if not 0 < args.port <= MAX_PORT:
        raise Glm4EdgeError(f"--port must be between 1 and {MAX_PORT}, got {args.port}")
    from .. import ui

    auth = ui.parse_auth(args.auth)
    options = sampling_options(args)
    kiosk_config = None
    if args.kiosk:
        kiosk_config = ui.load_kiosk_config(args.config) if args.config is not None else ui.KioskConfig()
    if args.kiosk:  # a public terminal must never run a damaged copy
        args.model, verified = verify_at_start(args.model, "ui", skip=args.no_verify)
    model = load_model(args, warm_up=True)  # the first visitor should not pay for lazy initialisation
    app = ui.build_app(model, kiosk_config, system_prompt=args.system, python_tool="python" in args.tools,
                       **options)
    if not is_loopback(args.host) and auth is None:
        print(f"glm4-edge ui: note: listening on {args.host} without --auth; anyone on the network can chat",
              file=sys.stderr)
    try:
        # Gradio's own banner suggests share=True, which this verb never uses: print our own line instead.
        ui.launch(app, host=args.host, port=args.port, auth=auth, block=False, quiet=True)
        mode = "kiosk" if args.kiosk else "chat"
        if args.kiosk:
            print(verified, flush=True)
        print(f"glm4-edge ui: {mode} for {model.describe()} on http://{args.host}:{args.port} "
              f"(Ctrl-C to stop)", flush=True)
        while app.is_running:  # Gradio serves from its own threads; the main thread waits for a signal
            time.sleep(WAIT_POLL_S)
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM (systemd stop): the normal way to end a server
    finally:
        app.close()
    return 0

