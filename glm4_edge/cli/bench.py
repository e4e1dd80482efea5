"""`glm4-edge bench MODEL`: load time, TTFT, decode and prefill rates, memory, over several runs."""

from __future__ import annotations

import argparse
import json
import sys

from ..bench import (
    DEFAULT_GEN_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    BenchOptions,
    bench,
)
from .common import add_model_args, properties


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure load time, TTFT, tokens/s and memory")
    add_model_args(parser, fallback=False)  # measures the device asked for, never a fallback
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS,
                        help=f"prompt length, chat template included (default {DEFAULT_PROMPT_TOKENS})")
    parser.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS,
                        help=f"tokens generated per run, EOS ignored (default {DEFAULT_GEN_TOKENS})")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"measured runs (default {DEFAULT_RUNS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"unmeasured runs first (default {DEFAULT_WARMUP})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = BenchOptions(model=args.model, device=args.device, prompt_tokens=args.prompt_tokens,
                           gen_tokens=args.gen_tokens, runs=args.runs, warmup=args.warmup, seed=args.seed,
                           draft=args.draft, prompt_lookup=args.prompt_lookup,
                           max_prompt_len=args.max_prompt_len,
                           min_response_len=args.min_response_len, cache=not args.no_cache,
                           properties=properties(args))
    quiet = args.json or not sys.stderr.isatty()
    result = bench(options, progress=None if quiet else lambda message: print(message, file=sys.stderr))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.summary())
    return 0
