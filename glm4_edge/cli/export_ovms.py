"""`glm4-edge export-ovms MODEL -o REPO`: an OpenVINO Model Server repository serving MODEL (see docs/ovms.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..ovms import DEFAULT_CACHE_SIZE_GB, DEFAULT_MAX_NUM_SEQS, OvmsOptions, export
from .common import add_property_arg, properties


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-ovms", help="write an OpenVINO Model Server repository for a converted model",
        description="Write REPO/config.json and REPO/NAME (graph.pbtxt for OVMS's LLM calculator and the model "
                    "files, hard-linked where possible) so OpenVINO Model Server serves the model with "
                    "continuous batching at /v3/chat/completions. See docs/ovms.md for Docker and Kubernetes.")
    parser.add_argument("model", type=Path, help="converted model folder (from `glm4-edge convert`)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="model repository folder")
    parser.add_argument("--name", help="model name clients send (default: the model's name)")
    parser.add_argument("--device", default="CPU", help="CPU, GPU, GPU.1 or NPU, as the server will see it")
    parser.add_argument("--cache-size", type=int, default=DEFAULT_CACHE_SIZE_GB,
                        help=f"KV cache in GB for continuous batching (default {DEFAULT_CACHE_SIZE_GB})")
    parser.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS,
                        help=f"sequences decoded together at most (default {DEFAULT_MAX_NUM_SEQS})")
    parser.add_argument("--max-num-batched-tokens", type=int, help="tokens per scheduler step (OVMS default)")
    parser.add_argument("--no-prefix-caching", action="store_true",
                        help="do not reuse the KV cache of repeated prompt prefixes (chat histories)")
    parser.add_argument("--kv-cache-precision", help="e.g. u8: a smaller KV cache")
    parser.add_argument("--ov-cache-dir", metavar="PATH",
                        help="compile cache folder as the server sees it (worth it on GPU/NPU; mount a volume)")
    parser.add_argument("--max-prompt-len", type=int, help="NPU: static prompt length (default: the model's)")
    parser.add_argument("--min-response-len", type=int, help="NPU: static response length (default: the model's)")
    parser.add_argument("--copy", action="store_true", help="copy the model files instead of hard-linking them")
    parser.add_argument("--force", action="store_true", help="replace REPO/NAME if it exists")
    add_property_arg(parser)
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = export(OvmsOptions(
        model=args.model, repository=args.output, name=args.name, device=args.device, cache_size_gb=args.cache_size,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, kv_cache_precision=args.kv_cache_precision,
        ov_cache_dir=args.ov_cache_dir, max_prompt_len=args.max_prompt_len, min_response_len=args.min_response_len,
        plugin_config=properties(args), copy=args.copy, force=args.force))
    if args.json:
        print(json.dumps({"repository": str(result.repository), "name": result.name, "graph": str(result.graph),
                          "config": str(result.config), "linked": result.linked, "options": result.options},
                         indent=2))
        return 0
    how = "hard-linked" if result.linked else "copied"
    print(f"wrote {result.graph} and {result.config} (model files {how})")
    print(f"serve it: docker run --rm -p 8000:8000 -v {result.repository.resolve()}:/models:ro "
          f"openvino/model_server:latest --rest_port 8000 --config_path /models/{result.config.name}")
    print(f"then: POST http://localhost:8000/v3/chat/completions with \"model\": \"{result.name}\"")
    return 0
