"""`glm4-edge devices`: the OpenVINO devices here, which is fastest for a model, and the compile cache.

    glm4-edge devices                         list devices and what they can do
    glm4-edge devices --bench MODEL           measure each device on MODEL; AUTO then uses the winner
    glm4-edge devices --cache [--prune]       compile-cache entries, sizes, staleness; delete stale ones
    glm4-edge devices --warm-cache MODEL      compile MODEL for --device into the cache, then exit
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..device_bench import DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_RUNS
from ..errors import Glm4EdgeError
from .common import add_property_arg, properties

BYTES_PER_MB = 1e6


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "devices", help="list OpenVINO devices; measure which is fastest; manage the compile cache",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--bench", type=Path, metavar="MODEL",
                        help="run a short prefill and decode on every device (and CPU with --draft), print them "
                             "side by side and record the winner for --device AUTO")
    action.add_argument("--cache", action="store_true", help="list compile-cache entries with size and status")
    action.add_argument("--warm-cache", type=Path, metavar="MODEL",
                        help="compile MODEL for --device into the compile cache and exit (CPU too)")
    parser.add_argument("--prune", action="store_true", help="with --cache: delete the stale entries")
    parser.add_argument("--device", help="with --warm-cache: the device to compile for (NPU, GPU, CPU, AUTO)")
    parser.add_argument("--draft", type=Path, help="with --bench: also measure CPU with this draft model")
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS,
                        help=f"with --bench: prompt length (default {DEFAULT_PROMPT_TOKENS})")
    parser.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS,
                        help=f"with --bench: tokens generated per run (default {DEFAULT_GEN_TOKENS})")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"with --bench: measured runs per device (default {DEFAULT_RUNS})")
    parser.add_argument("--max-prompt-len", type=int, help="NPU: static prompt length (as you will run it)")
    parser.add_argument("--min-response-len", type=int, help="NPU: static response length (as you will run it)")
    add_property_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.prune and not args.cache:
        raise Glm4EdgeError("--prune goes with --cache: glm4-edge devices --cache --prune")
    if args.bench is not None:
        return _bench(args)
    if args.cache:
        return _cache(args)
    if args.warm_cache is not None:
        return _warm(args)
    return _list(args)


def _list(args: argparse.Namespace) -> int:
    from ..devices import describe_devices

    infos = describe_devices()
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    table = Table(title="OpenVINO devices")
    for column in ("device", "full name", "capabilities", "details"):
        table.add_column(column, overflow="fold")  # wrap, never cut: these values are what users copy
    for info in infos:
        details = ", ".join(f"{k}={v}" for k, v in info.properties.items())
        table.add_row(info.name, info.full_name, ", ".join(info.capabilities), details)
    Console().print(table)
    missing = [d for d in ("GPU", "NPU") if not any(i.name.startswith(d) for i in infos)]
    if missing:
        Console(stderr=True).print(f"[dim]not found: {', '.join(missing)} (install the Intel GPU/NPU driver if "
                                   "the hardware is present)[/]")
    return 0


def _bench_extra(args: argparse.Namespace) -> list[str]:
    extra = []
    for flag in ("max_prompt_len", "min_response_len"):
        value = getattr(args, flag)
        if value is not None:
            extra += [f"--{flag.replace('_', '-')}", str(value)]
    for text in args.property:
        extra += ["--property", text]
    return extra


def _bench(args: argparse.Namespace) -> int:
    from ..device_bench import bench_devices, config_dir

    if args.runs < 1 or args.gen_tokens < 2 or args.prompt_tokens < 1:
        raise Glm4EdgeError("--runs must be at least 1, --gen-tokens at least 2 and --prompt-tokens at least 1")
    properties(args)  # a malformed --property fails here, before any child process
    quiet = args.json or not sys.stderr.isatty()
    choice = bench_devices(args.bench, draft=args.draft, prompt_tokens=args.prompt_tokens,
                           gen_tokens=args.gen_tokens, runs=args.runs, extra=_bench_extra(args),
                           progress=None if quiet else lambda message: print(message, file=sys.stderr))
    if args.json:
        print(json.dumps(choice.as_dict(), indent=2))
        return 0
    table = Table(title=f"{args.bench}: {choice.prompt_tokens}-token prompt, {choice.gen_tokens} tokens (median)")
    for column in ("device", "decode tok/s", "TTFT", "prefill tok/s", "peak RSS", "load (cached)", "note"):
        table.add_column(column)
    for score in choice.scores:
        if score.error:
            table.add_row(score.label, "-", "-", "-", "-", "-", score.error)
            continue
        best = score.device == choice.device and score.draft == choice.draft
        table.add_row(score.label, f"{score.tokens_per_s:.1f}", f"{score.ttft_s * 1000:.0f} ms",
                      f"{score.prefill_tokens_per_s:.0f}", f"{score.peak_memory_bytes / 2**30:.2f} GiB",
                      f"{score.load_s:.1f} s", "fastest" if best else "")
    Console().print(table)
    how = f" (with --draft {choice.draft})" if choice.draft else ""
    print(f"recorded {choice.device}{how} for --device AUTO in {config_dir()}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from .. import compile_cache
    from ..devices import cache_root

    removed = compile_cache.prune() if args.prune else []
    listed = compile_cache.entries()
    if args.json:
        def row(entry):
            return {"path": str(entry.path), "record": asdict(entry.record) if entry.record else None,
                    "size_bytes": entry.size_bytes, "blobs": entry.blobs, "status": entry.status}

        print(json.dumps({"root": str(cache_root()), "entries": [row(e) for e in listed],
                          "removed": [row(e) for e in removed]}, indent=2))
        return 0
    if not listed and not removed:
        print(f"the compile cache at {cache_root()} is empty: GPU and NPU fill it on first load; for the CPU, "
              "`glm4-edge devices --warm-cache MODEL --device CPU` makes one")
        return 0
    table = Table(title=f"compile cache: {cache_root()}")
    for column in ("model", "device", "OpenVINO", "driver", "size", "last used", "status"):
        table.add_column(column, overflow="fold", no_wrap=column in ("device", "size"))
    for entry in listed:
        record = entry.record
        table.add_row(record.model_name if record else entry.path.name, record.device if record else "?",
                      record.openvino if record else "?", record.driver if record else "?",
                      f"{entry.size_bytes / BYTES_PER_MB:,.1f} MB",
                      record.last_used[:16].replace("T", " ") if record else "-", entry.status)
    Console().print(table)
    if removed:
        freed = sum(e.size_bytes for e in removed)
        print(f"pruned {len(removed)} stale entr{'y' if len(removed) == 1 else 'ies'}, "
              f"{freed / BYTES_PER_MB:,.1f} MB freed")
    elif not args.prune and any(e.stale for e in listed):
        print("stale entries can never be used again: glm4-edge devices --cache --prune")
    elif args.prune:
        print("nothing to prune: no entry is stale")
    return 0


def _warm(args: argparse.Namespace) -> int:
    from ..compile_cache import warm
    from ..model import load

    if not args.device:
        raise Glm4EdgeError("--warm-cache needs the device it compiles for: --device NPU (or GPU, CPU, AUTO)")
    result = warm(args.warm_cache, args.device, load, max_prompt_len=args.max_prompt_len,
                  min_response_len=args.min_response_len, properties=properties(args), fallback_device=None)
    if args.json:
        print(json.dumps({**asdict(result), "path": str(result.path)}, indent=2))
        return 0
    print(f"compiled {args.warm_cache} for {result.device} in {result.compile_s:.1f} s: {result.blobs} blob(s), "
          f"{result.size_bytes / BYTES_PER_MB:,.1f} MB in {result.path}")
    return 0
