"""Arguments and loading shared by the verbs that run a model."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path
from typing import Any

from ..errors import BadParameterError
from ..model import Model, load
from ..options import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, GenerationOptions


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="converted model folder (from `glm4-edge convert`)")
    parser.add_argument("--device", default="CPU", help="CPU, GPU, GPU.1, NPU or AUTO (default CPU)")
    parser.add_argument("--draft", type=Path, help="draft model folder for speculative decoding")
    parser.add_argument("--prompt-lookup", action="store_true",
                        help="draft tokens from n-grams of the prompt (speculative decoding without a draft model)")
    parser.add_argument("--max-prompt-len", type=int, help="NPU: static prompt length")
    parser.add_argument("--min-response-len", type=int, help="NPU: static response length")
    parser.add_argument("--no-cache", action="store_true", help="GPU/NPU: do not cache compiled blobs")
    add_property_arg(parser)


def add_property_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                        help="OpenVINO pipeline property, repeatable (e.g. KV_CACHE_PRECISION=u4, "
                             "DYNAMIC_QUANTIZATION_GROUP_SIZE=4096)")


def properties(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_property(text) for text in args.property)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The generation options every verb that answers takes, with the Python API's names and meaning."""
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--seed", type=int, help="sampling seed (default: a fresh one for every answer)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options from `add_sampling_args`, checked now: a bad value fails before the model loads."""
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
               "top_k": args.top_k, "repetition_penalty": args.repetition_penalty,
               "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
               "seed": args.seed, "stop": list(args.stop)}
    try:
        GenerationOptions.of(options)
    except BadParameterError as error:
        raise BadParameterError(f"--{(error.param or '').replace('_', '-')}: {error}", error.param) from None
    return options


def load_model(args: argparse.Namespace, warm_up: bool = False) -> Model:
    return load(args.model, args.device, max_prompt_len=args.max_prompt_len,
                min_response_len=args.min_response_len, cache=not args.no_cache, draft=args.draft,
                prompt_lookup=args.prompt_lookup, properties=properties(args), warm_up=warm_up)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_property(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` for the pipeline: integers and true/false are typed, the rest stays a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise BadParameterError(f"--property {text!r} must look like KEY=VALUE, e.g. KV_CACHE_PRECISION=u8",
                                "property")
    value = value.strip()
    if value.lower() in ("true", "false"):
        return key.strip(), value.lower() == "true"
    if re.fullmatch(r"-?\d+", value):
        return key.strip(), int(value)
    return key.strip(), value
