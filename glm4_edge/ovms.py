"""A converted model as an OpenVINO Model Server (OVMS) model repository: continuous batching past one box.

    REPO/config.json        {"model_config_list": [], "mediapipe_config_list": [{"name": NAME, "base_path": NAME}]}
    REPO/NAME/graph.pbtxt   a MediaPipe graph with one HttpLLMCalculator node and its LLMCalculatorOptions
    REPO/NAME/...           the model folder itself (hard links when the file system allows, else copies)

The layout, the graph and the config list follow OVMS's LLM serving reference (docs/llm/reference.md)
and its export script (demos/common/export_models/export_model.py, openvinotoolkit/model_server commit
01d5dfd6a089ad75a194b824404fb807dae71bf3); the option names and types are those of
src/llm/llm_calculator.proto at commit 06fa25b33c5cf77354a4caad05a02c77acf87288. OVMS serves the
graph at /v3/chat/completions and /v3/completions (OpenAI API), batching concurrent requests on CPU
and GPU; on the NPU it runs a stateful pipeline, one request at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .devices import base_device
from .errors import BadParameterError, Glm4EdgeError, ModelFormatError
from .manifest import read_manifest

GRAPH_FILE = "graph.pbtxt"
CONFIG_FILE = "config.json"
OVMS_DEVICES = ("CPU", "GPU", "NPU")
# KV cache in GB. GLM-4-9B keeps 40 layers x 2 (K, V) x 2 KV heads x 128 values per token: 40 KiB at
# fp16, so 4 GB holds about 100k tokens (50 conversations of 2k). OVMS's export script writes 10.
DEFAULT_CACHE_SIZE_GB = 4
DEFAULT_MAX_NUM_SEQS = 256  # llm_calculator.proto's default
# Files the LLM calculator reads (docs/llm/reference.md, "Models Directory"); the rest of the folder
# (config.json, generation_config.json, glm4_edge.json) is copied too: small, and GenAI reads them.
REQUIRED_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
                  "openvino_detokenizer.xml", "openvino_detokenizer.bin")

GRAPH_TEMPLATE = """\
# Written by glm4-edge export-ovms for {source}.
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  input_stream_info: {{
    tag_index: "LOOPBACK:0",
    back_edge: true
  }}
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
{options}
    }}
  }}
  input_stream_handler {{
    input_stream_handler: "SyncSetInputStreamHandler",
    options {{
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
        sync_set {{
          tag_index: "LOOPBACK:0"
        }}
      }}
    }}
  }}
}}
"""


@dataclass
class OvmsOptions:
    model: Path
    repository: Path
    name: str | None = None  # the model id clients send; default: the manifest's name or the folder's
    device: str = "CPU"
    cache_size_gb: int = DEFAULT_CACHE_SIZE_GB
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True  # chat clients resend the history; the graph's own default is off
    kv_cache_precision: str | None = None  # e.g. "u8"
    ov_cache_dir: str | None = None  # CACHE_DIR as the server sees it (a path inside its container)
    max_prompt_len: int | None = None  # NPU
    min_response_len: int | None = None  # NPU
    plugin_config: dict[str, object] = field(default_factory=dict)  # more OpenVINO properties
    copy: bool = False  # copy the model files even where hard links would do
    force: bool = False  # replace REPO/NAME if it exists


@dataclass
class OvmsExport:
    repository: Path
    name: str
    model_dir: Path
    graph: Path
    config: Path
    linked: bool  # model files hard-linked rather than copied
    options: dict[str, object]  # the LLMCalculatorOptions written


def pbtxt_string(value: str) -> str:
    """A protobuf text-format string literal (double quotes; backslash and quote escaped)."""
    if any(ord(c) < 0x20 for c in value):
        raise BadParameterError(f"{value!r} has a control character; OVMS options take plain text")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return pbtxt_string(str(value))


def calculator_options(options: OvmsOptions) -> dict[str, object]:
    """The LLMCalculatorOptions for this export, in the proto's field order; BadParameterError on misuse."""
    device = options.device.strip().upper()
    base = base_device(device)
    if base not in OVMS_DEVICES:
        raise BadParameterError(f"--device {options.device}: OVMS runs an LLM on {', '.join(OVMS_DEVICES)}", "device")
    for name, value, low in (("--cache-size", options.cache_size_gb, 0), ("--max-num-seqs", options.max_num_seqs, 1),
                             ("--max-num-batched-tokens", options.max_num_batched_tokens, 1),
                             ("--max-prompt-len", options.max_prompt_len, 1),
                             ("--min-response-len", options.min_response_len, 1)):
        if value is not None and value < low:
            raise BadParameterError(f"{name} {value} must be at least {low}", name.strip("-").replace("-", "_"))
    plugin: dict[str, object] = dict(options.plugin_config)
    if options.kv_cache_precision:
        plugin["KV_CACHE_PRECISION"] = options.kv_cache_precision
    if options.ov_cache_dir:
        plugin["CACHE_DIR"] = options.ov_cache_dir
    manifest = read_manifest(options.model)
    if base == "NPU":
        if manifest is None or manifest.target_device != "npu":
            made_for = f"--device {manifest.target_device}" if manifest else "another tool"
            raise ModelFormatError(f"{options.model} was converted with {made_for}, not for the NPU (symmetric INT4 "
                                   f"by its group rule); convert it with: glm4-edge convert SOURCE --device npu")
        npu = manifest.npu or {}
        plugin.setdefault("MAX_PROMPT_LEN", int(options.max_prompt_len or npu.get("max_prompt_len") or 1024))
        plugin.setdefault("MIN_RESPONSE_LEN", int(options.min_response_len or npu.get("min_response_len") or 256))
    elif options.max_prompt_len or options.min_response_len:
        raise BadParameterError("--max-prompt-len and --min-response-len are NPU settings; drop them or use "
                                "--device NPU", "max_prompt_len")
    result: dict[str, object] = {"models_path": "./"}
    if options.max_num_batched_tokens:
        result["max_num_batched_tokens"] = int(options.max_num_batched_tokens)
    result["cache_size"] = int(options.cache_size_gb)
    result["max_num_seqs"] = int(options.max_num_seqs)
    result["device"] = device
    result["plugin_config"] = json.dumps(plugin, sort_keys=True)
    result["enable_prefix_caching"] = bool(options.enable_prefix_caching) and base != "NPU"
    return result


def render_graph(options: dict[str, object], source: str) -> str:
    lines = ",\n".join(f"      {key}: {_scalar(value)}" for key, value in options.items())
    return GRAPH_TEMPLATE.format(source=source.replace("\n", " "), options=lines)


def merge_config(existing: dict | None, name: str, base_path: str) -> dict:
    """config.json with this graph in mediapipe_config_list, other models kept (as the export script does)."""
    config = dict(existing or {})
    config.setdefault("model_config_list", [])
    graphs = [g for g in config.get("mediapipe_config_list", []) if g.get("name") != name]
    graphs.append({"name": name, "base_path": base_path})
    config["mediapipe_config_list"] = graphs
    return config


def _place(source: Path, target: Path, copy: bool) -> bool:
    """Hard-link (True) or copy (False) one file."""
    if not copy:
        try:
            os.link(source, target)
            return True
        except OSError:  # another file system, or links not allowed
            pass
    shutil.copy2(source, target)
    return False


def export(options: OvmsOptions) -> OvmsExport:
    """Write REPO/NAME (graph and model) and add NAME to REPO/config.json.

    Raises ModelFormatError for a folder that is not a converted model, BadParameterError for
    impossible settings, Glm4EdgeError when REPO/NAME exists without `force`. Nothing is left half
    written: the model folder is assembled under a temporary name and renamed into place.
    """
    from .loading import check_model_folder

    folder = check_model_folder(options.model)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelFormatError(f"{folder} lacks {', '.join(missing)}, which OVMS loads")
    manifest = read_manifest(folder)
    name = options.name or (manifest.name if manifest else folder.resolve().name)
    if not name or "/" in name or name.startswith("."):
        raise BadParameterError(f"--name {name!r}: give a plain name (no '/', not starting with '.')", "name")
    calc = calculator_options(options)
    repository = Path(options.repository).expanduser()
    config_path = repository / CONFIG_FILE
    existing = None
    if config_path.exists():
        try:
            existing = json.loads(config_path.read_text())
            if not isinstance(existing, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            raise Glm4EdgeError(f"{config_path} is not an OVMS config ({error}); move it away or pick another "
                                "repository") from None
    target = repository / name
    if target.exists() and not options.force:
        raise Glm4EdgeError(f"{target} exists; pass --force to replace it")
    if target.resolve() == folder.resolve() or folder.resolve() in target.resolve().parents:
        raise BadParameterError(f"-o {repository}: the repository must not be the model folder itself", "output")
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
    try:
        linked = True
        for item in sorted(folder.iterdir()):
            if item.is_file():
                linked = _place(item, staging / item.name, options.copy) and linked
        (staging / GRAPH_FILE).write_text(render_graph(calc, str(folder)))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    config = merge_config(existing, name, name)
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=4) + "\n")
    tmp.replace(config_path)
    return OvmsExport(repository, name, target, target / GRAPH_FILE, config_path, linked, calc)
