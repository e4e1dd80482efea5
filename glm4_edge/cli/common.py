"""Arguments and loading shared by the verbs that run a model."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path
from typing import Any

from ..errors import BadParameterError
from ..fallback import DEFAULT_FALLBACK_DEVICE, NO_FALLBACK
from ..model import Model, load
from ..options import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, GenerationOptions


def add_model_args(parser: argparse.ArgumentParser, fallback: bool = True) -> None:
    parser.add_argument("model", type=Path, help="converted model: a folder or a store name (`glm4-edge list`)")
    add_runtime_args(parser, fallback)


def add_runtime_args(parser: argparse.ArgumentParser, fallback: bool = True) -> None:
    """The options of every verb that loads a model, without the model itself (`run` takes a source)."""
    parser.add_argument("--device", default="CPU", help="CPU, GPU, GPU.1, NPU or AUTO (default CPU)")
    parser.add_argument("--draft", type=Path, help="draft model folder for speculative decoding")
    parser.add_argument("--prompt-lookup", action="store_true",
                        help="draft tokens from n-grams of the prompt (speculative decoding without a draft model)")
    parser.add_argument("--max-prompt-len", type=int, help="NPU: static prompt length")
    parser.add_argument("--min-response-len", type=int, help="NPU: static response length")
    parser.add_argument("--no-cache", action="store_true", help="GPU/NPU: do not cache compiled blobs")
    if fallback:
        parser.add_argument("--fallback-device", default=DEFAULT_FALLBACK_DEVICE, type=_fallback_choice,
                            metavar="{CPU,GPU,none}",
                            help="NPU: answer requests over its static prompt/response shape on this device, "
                                 f"loaded when first needed (default {DEFAULT_FALLBACK_DEVICE}; none: an error)")
    add_property_arg(parser)


def _fallback_choice(text: str) -> str:
    if text.strip().lower() == NO_FALLBACK:
        return NO_FALLBACK
    if text.strip().upper().split(".")[0] not in ("CPU", "GPU"):
        raise argparse.ArgumentTypeError(f"{text!r}: choose CPU, GPU, GPU.1 or none")
    return text.strip().upper()


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
                prompt_lookup=args.prompt_lookup, properties=properties(args), warm_up=warm_up,
                fallback_device=getattr(args, "fallback_device", DEFAULT_FALLBACK_DEVICE))


def add_verify_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--no-verify", action="store_true",
                        help=f"{what}: skip hashing every model file at start (file sizes are still checked)")


def verify_at_start(model: str | Path, verb: str, skip: bool = False) -> tuple[Path, str]:
    """A kiosk or server refuses a damaged model before it starts: every file against its manifest SHA-256.

    Returns the model folder and a line for the console, printed by the caller once it has started (so
    that a later error stays one line); raises `ModelFormatError` naming the first damaged file.
    """
    from ..integrity import require_verified
    from ..loading import check_model_folder

    folder = check_model_folder(model)
    if skip:
        return folder, f"glm4-edge {verb}: model files not verified (--no-verify)"
    report = require_verified(folder)
    if not report.verifiable:
        return folder, (f"glm4-edge {verb}: note: {folder} records no file hashes (converted by an older "
                        "glm4-edge or another tool), so it was not verified")
    return folder, (f"glm4-edge {verb}: verified {report.files} model files ({report.bytes / 1e6:,.1f} MB) in "
                    f"{report.seconds:.1f} s")


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
