"""`glm4-edge serve MODEL`: an OpenAI-compatible HTTP server (chat, completions, models, health, metrics)."""

from __future__ import annotations

import argparse
import sys
from functools import partial

from ..batching import BATCHING_DEVICES, load_batched
from ..devices import base_device
from ..errors import Glm4EdgeError
from ..loading import check_model_folder, load
from ..manifest import read_manifest
from .common import add_model_args, add_verify_arg, is_loopback, properties, verify_at_start

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_parser(subparsers) -> None:
    from .. import server

    parser = subparsers.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API",
        description="Serve a converted model at /v1/chat/completions, /v1/completions, /v1/responses, "
                    "/v1/messages (Anthropic) and /v1/models, with /health, Prometheus /metrics and the API "
                    "at /docs. Binds 127.0.0.1 unless told otherwise.")
    add_model_args(parser)
    parser.add_argument("--host", default=server.DEFAULT_HOST,
                        help=f"address to bind (default {server.DEFAULT_HOST}; 0.0.0.0 exposes it to the "
                             "network)")
    parser.add_argument("--port", type=int, default=server.DEFAULT_PORT,
                        help=f"TCP port (default {server.DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--api-key",
                        help=f"require 'Authorization: Bearer KEY' (default: ${server.API_KEY_ENV})")
    parser.add_argument("--max-concurrency", type=int, default=server.DEFAULT_MAX_CONCURRENCY,
                        help="generations in progress at once; later requests queue "
                             f"(default {server.DEFAULT_MAX_CONCURRENCY})")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                        help="decode concurrent requests together (ContinuousBatchingPipeline, CPU/GPU); "
                             "default: on when --max-concurrency is above 1")
    parser.add_argument("--model-name", help="the model id clients send (default: the model folder's name)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from ORIGIN (CORS); repeatable; off by default")
    parser.add_argument("--max-body-bytes", type=int, default=server.DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body accepted (default {server.DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_verify_arg(parser, "server")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import server

    if not 0 <= args.port <= 65535:
        raise Glm4EdgeError(f"--port {args.port} is not a TCP port; use 1-65535, or 0 for any free port")
    if args.max_concurrency < 1:
        raise Glm4EdgeError(f"--max-concurrency {args.max_concurrency}: must be at least 1")
    if args.max_body_bytes < 1024:
        raise Glm4EdgeError(f"--max-body-bytes {args.max_body_bytes}: must be at least 1024")
    for origin in args.allow_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise Glm4EdgeError(f"--allow-origin {origin}: give a full origin like http://localhost:3000")
    # Check the folder before binding: a typo should fail now, not after the server reports ready to load.
    folder = check_model_folder(args.model)
    manifest = read_manifest(folder)
    default_name = manifest.name if manifest else folder.resolve().name
    name = args.model_name or default_name
    api_key = server.api_key_from_env(args.api_key)
    if api_key is None and not is_loopback(args.host):
        print(f"glm4-edge serve: warning: {args.host} is reachable from other machines and no API key is set "
              f"(--api-key or ${server.API_KEY_ENV})", file=sys.stderr)
    batching = args.batching if args.batching is not None else args.max_concurrency > 1
    if batching:
        vision = bool(manifest and manifest.vision)
        if args.batching and vision:
            raise Glm4EdgeError("--batching is for text models; a GLM-4V model answers one request at a time: "
                                "drop --batching")
        if base_device(args.device) not in BATCHING_DEVICES or args.draft is not None or args.prompt_lookup \
                or vision:
            if args.batching:
                raise Glm4EdgeError(f"--batching runs on CPU or GPU without --draft/--prompt-lookup, not "
                                    f"{args.device}; drop --batching")
            batching = False  # NPU, AUTO, speculative decoding or GLM-4V: requests queue for the one model
    if batching:
        loader = partial(load_batched, folder, args.device, cache=not args.no_cache, warm_up=True,
                         properties=properties(args), max_concurrency=args.max_concurrency)
    else:
        loader = partial(load, folder, args.device, max_prompt_len=args.max_prompt_len,
                         min_response_len=args.min_response_len, cache=not args.no_cache, draft=args.draft,
                         prompt_lookup=args.prompt_lookup, properties=properties(args),
                         warm_up=True, fallback_device=args.fallback_device)
    folder, verified = verify_at_start(folder, "serve", skip=args.no_verify)
    print(verified, file=sys.stderr, flush=True)
    config = server.ServerConfig(load=loader, model_name=name, aliases=(default_name,), api_key=api_key,
                                 max_concurrency=args.max_concurrency, allow_origins=tuple(args.allow_origin),
                                 max_body_bytes=args.max_body_bytes,
                                 engine="continuous batching" if batching else "one pipeline")
    try:
        server.serve(config, args.host, args.port, args.log_level,
                     announce=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:  # SIGINT/SIGTERM after a graceful shutdown: a normal way to stop a server
        pass
    return 0

