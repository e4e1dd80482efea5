"""OpenVINO device discovery and validation, per-device pipeline properties, compile cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import BadParameterError, DeviceError, ModelFormatError
from .manifest import Manifest

DEFAULT_NPU_MAX_PROMPT_LEN = 1024
DEFAULT_NPU_MIN_RESPONSE_LEN = 256
CACHE_ENV = "GLM4_EDGE_CACHE_DIR"
# OpenVINO quantizes activations per 32 values by default; per 128 decodes 1.21x faster on CPU with the
# channel-wise INT4 weights of the --fast preset (docs/benchmarks.md, side-by-side tuning). Per 4096 was 1.10x
# faster again but stays opt-in (--property): its accuracy on real checkpoints is unmeasured.
CPU_DYNAMIC_QUANTIZATION_GROUP = 128
# With weights in groups smaller than that (the cpu preset's group 32), the plugin leaves activations
# unquantized when asked for 128 (logits identical to DQ off, docs/benchmarks.md "Quality"), the
# slow path (DQ off decoded 0.69x DQ 128 on group-128 weights); such models get their group size.


@dataclass
class DeviceInfo:
    name: str
    full_name: str
    capabilities: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _core():
    import openvino

    return openvino.Core()


def base_device(device: str) -> str:
    """The plugin a device name runs on: "GPU.1" -> "GPU", "AUTO:GPU,CPU" -> "AUTO"."""
    return device.strip().upper().split(".")[0].split(":")[0]


def available_devices() -> list[str]:
    return list(_core().available_devices)


def describe_devices() -> list[DeviceInfo]:
    core = _core()
    infos = []
    for name in core.available_devices:
        def prop(key: str, default: Any = "", name: str = name) -> Any:
            try:
                return core.get_property(name, key)
            except Exception:  # a plugin may not implement every property
                return default

        extra = {}
        for key in ("DEVICE_TYPE", "DEVICE_ARCHITECTURE", "GPU_DEVICE_TOTAL_MEM_SIZE", "INFERENCE_NUM_THREADS"):
            value = prop(key, None)
            if value not in (None, ""):
                # OpenVINO returns some properties as enums (Type.INTEGRATED): users read the lowercase name
                extra[key] = value.name.lower() if hasattr(value, "name") and not isinstance(value, str) else str(value)
        infos.append(DeviceInfo(name, str(prop("FULL_DEVICE_NAME", name)),
                                [str(c) for c in prop("OPTIMIZATION_CAPABILITIES", [])], extra))
    return infos


def npu_on_cpu(properties: dict[str, Any] | None) -> bool:
    """Whether `properties` ask the NPU plugin to run its NPUW partitions on the CPU (`NPUW_DEVICES=CPU`).

    The NPU plugin ships in every OpenVINO wheel and its NPUW layer (the one openvino-genai drives for
    LLMs: static prefill/generate shapes, stateful-to-stateless KV cache) can back onto the CPU, so an NPU
    deployment's static-shape behaviour can be tried, and is tested here, on a machine without an NPU.
    It is not the NPU compiler: an op the real NPU refuses is only found on the NPU.
    """
    return str((properties or {}).get("NPUW_DEVICES", "")).strip().upper() == "CPU"


def check_device(device: str, properties: dict[str, Any] | None = None) -> str:
    """Normalize and validate a device string ("cpu", "GPU.1", "AUTO", "AUTO:GPU,CPU").

    "NPU" passes without an NPU when `properties` hold `NPUW_DEVICES=CPU` (`npu_on_cpu`).
    """
    wanted = device.strip().upper()
    if wanted == "NPU" and npu_on_cpu(properties):
        return wanted
    available = available_devices()
    if wanted.startswith(("AUTO", "HETERO", "MULTI")):
        _, _, targets = wanted.partition(":")
        missing = [t for t in filter(None, targets.split(",")) if not _present(t, available)]
        if missing:
            raise DeviceError(f"device {', '.join(missing)} not found; available: {', '.join(available)}")
        return wanted
    if not _present(wanted, available):
        raise DeviceError(f"device {wanted} not found; available: {', '.join(available) or 'none'} "
                          "(see `glm4-edge devices`; install the GPU/NPU driver if the hardware is there)")
    return wanted


def _present(device: str, available: list[str]) -> bool:
    return device in available or any(a.split(".")[0] == device for a in available)


def cache_root() -> Path:
    """The compile cache's root (not created); compile_cache.py keeps one folder per model, device and versions."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "glm4-edge")
    return Path(root) / "ov-cache"


def cache_dir() -> Path:
    """`cache_root()`, created."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pipeline_properties(device: str, manifest: Manifest | None, model_dir: Path,
                        max_prompt_len: int | None = None, min_response_len: int | None = None,
                        cache: bool = True) -> dict[str, Any]:
    """Properties for `LLMPipeline(model_dir, device, **props)`."""
    base = base_device(device)
    properties: dict[str, Any] = {}
    if base == "CPU":
        group = manifest.compression.group_size if manifest is not None else None
        properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = (
            group if group and 0 < group < CPU_DYNAMIC_QUANTIZATION_GROUP else CPU_DYNAMIC_QUANTIZATION_GROUP)
    if base == "NPU":
        if manifest is None or manifest.target_device != "npu":
            raise ModelFormatError(
                f"{model_dir} was not compressed for the NPU (it needs symmetric INT4 weights); convert it "
                f"with: glm4-edge convert SOURCE --device npu -o {model_dir}-npu")
        npu = manifest.npu or {}
        for flag, value in (("--max-prompt-len", max_prompt_len), ("--min-response-len", min_response_len)):
            if value is not None and value < 1:
                raise BadParameterError(f"{flag} {value}: give a number of tokens of at least 1", flag[2:])
        properties["MAX_PROMPT_LEN"] = int(max_prompt_len or npu.get("max_prompt_len")
                                           or DEFAULT_NPU_MAX_PROMPT_LEN)
        properties["MIN_RESPONSE_LEN"] = int(min_response_len or npu.get("min_response_len")
                                             or DEFAULT_NPU_MIN_RESPONSE_LEN)
        shape = properties["MAX_PROMPT_LEN"] + properties["MIN_RESPONSE_LEN"]
        if manifest.context_length and shape > manifest.context_length:
            # The static KV cache is allocated whole: past the model's context it only costs memory.
            raise BadParameterError(
                f"--max-prompt-len {properties['MAX_PROMPT_LEN']} + --min-response-len "
                f"{properties['MIN_RESPONSE_LEN']} = {shape} tokens is over the model's context of "
                f"{manifest.context_length}; choose lengths that add up to at most that", "max_prompt_len")
    from .compile_cache import cache_dir_for  # after the checks: a refused load leaves no cache folder

    cache_folder = cache_dir_for(model_dir, device, cache=cache)
    if cache_folder is not None:
        properties["CACHE_DIR"] = str(cache_folder)
    return properties
