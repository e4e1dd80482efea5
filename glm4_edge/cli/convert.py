"""`glm4-edge convert MODEL`: a GLM-4 checkpoint (folder or hub id) -> OpenVINO model folder."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from .. import store
from ..errors import Glm4EdgeError

MAX_ERROR_CHARS = 300


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a GLM-4 checkpoint to OpenVINO IR with INT4/INT8 weights",
        description="Convert a GLM-4 checkpoint (local folder or hub id) to an OpenVINO model folder.")
    parser.add_argument("model", help="checkpoint folder or hub id (e.g. THUDM/GLM-4-9B-0414)")
    parser.add_argument("-o", "--output", type=Path,
                        help="output folder (default: the model store, as <name>-<format>[-<device>]; see "
                             "`glm4-edge list`)")
    parser.add_argument("--weight-format", choices=("int4", "int8", "fp16"), default="int4")
    parser.add_argument("--device", choices=("cpu", "gpu", "npu"), default="cpu",
                        help="target device: picks the compression preset (default cpu)")
    parser.add_argument("--fast", action="store_true",
                        help="speed-first preset: channel-wise INT4, faster decode but coarser than llama.cpp "
                             "Q4_0 (cpu and gpu; see docs/benchmarks.md)")
    parser.add_argument("--group-size", type=int, help="INT4 group size; -1 = channel-wise")
    parser.add_argument("--ratio", type=float, help="share of weights in INT4, the rest in backup precision")
    parser.add_argument("--sym", action=argparse.BooleanOptionalAction, default=None,
                        help="symmetric quantization (--no-sym for asymmetric)")
    parser.add_argument("--all-layers", action=argparse.BooleanOptionalAction, default=None,
                        help="embeddings and lm_head in INT4 too")
    parser.add_argument("--awq", action="store_true", help="activation-aware weight quantization (data-aware)")
    parser.add_argument("--scale-estimation", action="store_true", help="scale estimation (data-aware)")
    parser.add_argument("--dataset", help="calibration data: 'builtin' (default), a .txt or a .jsonl file")
    parser.add_argument("--backup-precision", choices=("int8_asym", "int8_sym", "none"))
    parser.add_argument("--context", type=int,
                        help="context length in tokens; beyond the checkpoint's own RoPE window (a glm4 model's "
                        "config) writes YaRN rope scaling")
    parser.add_argument("--adapter", type=Path,
                        help="PEFT LoRA adapter folder, merged before export as PEFT's merge_and_unload does")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--npu-max-prompt-len", type=int, default=1024, help="NPU static prompt length")
    parser.add_argument("--npu-min-response-len", type=int, default=256, help="NPU static response length")
    parser.add_argument("--force", action="store_true", help="replace an existing output (after success)")
    parser.add_argument("--quiet", action="store_true", help="no progress or summary")
    parser.add_argument("--no-resource-check", action="store_true",
                        help="skip the free disk and RAM estimate made before converting")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.adapter is not None and not args.adapter.is_dir():
        raise Glm4EdgeError(f"--adapter {args.adapter}: no such folder")
    try:
        from ..convert import export
    except ImportError as error:
        raise Glm4EdgeError(f"conversion needs the [convert] extra ({error.name} is missing): "
                            "pip install 'glm4-edge[convert]'") from None
    from . import convert_report

    output = args.output
    if output is None:  # into the store, under the lock that `run` and `unpack` take for that name
        output = store.entry_path(store.entry_name(args.model, args.weight_format, args.device, args.adapter))
    options = export.ConvertOptions(
        source=args.model, output=output, weight_format=args.weight_format, device=args.device,
        group_size=args.group_size, ratio=args.ratio, sym=args.sym, all_layers=args.all_layers, awq=args.awq,
        scale_estimation=args.scale_estimation, dataset=args.dataset, backup_precision=args.backup_precision,
        fast=args.fast, context=args.context, adapter=args.adapter, revision=args.revision, force=args.force,
        npu_max_prompt_len=args.npu_max_prompt_len, npu_min_response_len=args.npu_min_response_len,
        check_resources=not args.no_resource_check)
    stage = ["starting"]

    try:
        with contextlib.ExitStack() as stack:
            if args.output is None:
                stack.enter_context(store.lock(output.name))
            show = stack.enter_context(convert_report.progress(quiet=args.quiet))

            def step(message: str) -> None:
                stage[0] = message
                show(message)

            result = export.convert(options, step)
    except Glm4EdgeError:
        raise
    except Exception as error:
        from .main import _interrupted

        if _interrupted(error):
            raise
        # Anything else from torch, optimum, NNCF or OpenVINO: the temporary folder is gone already
        # (convert.staging), so say where it failed in one line.
        if isinstance(error, MemoryError):
            raise Glm4EdgeError(f"conversion ran out of memory while {stage[0]}; nothing was written. Close other "
                                "programs or convert on a machine with more RAM (README: Measurements gives "
                                "what each model size needs)") from None
        raise Glm4EdgeError(f"conversion failed while {stage[0]} ({one_line(error)}); nothing was written. "
                            "Check the checkpoint, or report this with the message") from None
    if not args.quiet:
        convert_report.summary(result)
    return 0


def one_line(error: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """`Type: message` on one line, shortened to `limit` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
