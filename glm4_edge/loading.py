"""Loading a converted model folder: checks, device properties, the pipeline, and `load` itself.

`plan_load` checks the folder and device and chooses the pipeline properties; `open_pipeline` builds
the pipeline with OpenVINO's failures as one clear line; `model_facts` reads the context length,
generation prefix and stop ids. `load` puts them together into a `Model` (or a GLM-4V `VisionModel`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import allocator, device_bench, devices, glm_format, images, integrity, prefill, prompting, rope, store
from . import fallback as npu_fallback
from .errors import BadParameterError, Glm4EdgeError, ModelFormatError
from .manifest import Manifest, read_manifest

if TYPE_CHECKING:
    from .model import Model

DEFAULT_DEVICE = "CPU"
DEFAULT_CONTEXT = 8192
# KV_CACHE_PRECISION values openvino-genai 2026.4.1 runs on the CPU (measured; f32 and u3 fail to compile).
CPU_KV_PRECISIONS = ("u8", "u4", "f16", "bf16")
KV_BLOCK_MARGIN = 4  # blocks beyond the context in a KV cache sized at load (`presize_kv_cache`)
REQUIRED_FILES = ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
# A GLM-4V folder: three IRs instead of openvino_model.xml (see glm4_edge.vision).
REQUIRED_VISION_FILES = (*images.VISION_FILES, "openvino_tokenizer.xml", "openvino_detokenizer.xml")


@dataclass
class LoadPlan:
    """A checked model folder and device, with the pipeline properties to open them with."""

    folder: Path
    device: str
    manifest: Manifest | None
    properties: dict[str, Any]

    @property
    def base_device(self) -> str:
        return devices.base_device(self.device)


def check_model_folder(path: str | Path) -> Path:
    """The folder, if it holds a converted model; else a ModelFormatError saying what to do."""
    folder = store.resolve(path)  # a folder, or a name in the model store
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: no such model folder; convert one with `glm4-edge convert`")
    required = REQUIRED_VISION_FILES if (folder / images.LANGUAGE_MODEL_XML).is_file() else REQUIRED_FILES
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise ModelFormatError(f"{folder} is not an OpenVINO model folder (missing {', '.join(missing)}); "
                               "convert the checkpoint with `glm4-edge convert`")
    return folder


def plan_load(path: str | Path, device: str = DEFAULT_DEVICE, *, max_prompt_len: int | None = None,
              min_response_len: int | None = None, cache: bool = True,
              properties: dict[str, Any] | None = None) -> LoadPlan:
    folder = check_model_folder(path)
    manifest = read_manifest(folder)
    if manifest is not None:
        integrity.check_sizes(folder, manifest.files)  # a stat per file: a truncated copy fails here, by name
    device = devices.check_device(device_bench.resolve_auto(folder, device), properties)  # AUTO: measured winner
    props = devices.pipeline_properties(device, manifest, folder, max_prompt_len, min_response_len, cache)
    props.update(properties or {})
    allocator.limit_heap_retention()  # before any pipeline: its KV cache regrows per chunk of a long prompt
    return LoadPlan(folder, device, manifest, props)


def openvino_reason(error: Exception, limit: int = 300) -> str:
    """The line of an OpenVINO error that says what went wrong, not the "Exception from <file>" trail."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return ((said or lines or [type(error).__name__])[0])[:limit]


def open_pipeline(plan: LoadPlan, factory) -> tuple[Any, float]:
    """`factory()` builds the pipeline; an OpenVINO failure becomes one clear line."""
    started = time.perf_counter()
    try:
        pipeline = factory()
    except RuntimeError as error:
        reason = openvino_reason(error)
        if "key_cache_type" in reason:  # the CPU's paged attention refusing a KV precision, in its own words
            reason = (f"KV cache precision {kv_cache_precision(plan.properties) or '?'} is not supported here; "
                      f"on the CPU use {', '.join(CPU_KV_PRECISIONS)}")
        raise Glm4EdgeError(f"OpenVINO could not load {plan.folder} on {plan.device}: {reason}") from None
    return pipeline, time.perf_counter() - started


def plan_context(plan: LoadPlan) -> int:
    """The model's context in tokens: the manifest's, else the checkpoint config's (foreign models)."""
    manifest = plan.manifest
    return manifest.context_length if manifest and manifest.context_length else _config_context(plan.folder)


def kv_cache_precision(properties: dict[str, Any]) -> str:
    """The KV cache precision asked for, as a type name ("u8", "u4", ...; "" = the device default).

    OpenVINO takes it as KV_CACHE_PRECISION or as KEY_/VALUE_CACHE_PRECISION, each a string or an
    `openvino.Type`; "u4" if any of them is u4 (the one openvino-genai cannot regrow).
    """
    names = []
    for key in ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION"):
        value = properties.get(key)
        if value is not None:
            names.append(value.get_type_name() if hasattr(value, "get_type_name") else str(value).strip().lower())
    unsafe = [name for name in names if name in prefill.UNSAFE_KV_PRECISIONS]
    return (unsafe or names or [""])[0]


def presize_kv_cache(scheduler, context: int) -> bool:
    """Size `scheduler`'s KV cache for `context` tokens at load, so it never regrows; False if it cannot.

    A SchedulerConfig the user already sized (`num_kv_blocks` or `cache_size`) is left as it is (it does
    not regrow either). The cache is allocated whole but its pages become resident only as tokens land
    (measured: a 1M-token u4 or u8 cache on the 1-layer GLM-4-9B-shaped model left RSS unchanged), so a
    short chat pays nothing for a long context. A prompt beyond it is refused by our context check
    before openvino-genai would drop it.
    """
    if not hasattr(scheduler, "num_kv_blocks"):
        return False
    if not (scheduler.num_kv_blocks or scheduler.cache_size):
        # Every one-token call of the chunked prefill may hold one more block than its prompt needs.
        scheduler.num_kv_blocks = -(-context // prefill.CPU_KV_BLOCK_TOKENS) + KV_BLOCK_MARGIN
    return True


def size_unsafe_kv_cache(plan: LoadPlan, scheduler, context: int) -> bool:
    """On the CPU, size a KV cache openvino-genai cannot regrow (u4) for `context` tokens at load.

    True if the cache then never regrows (`presize_kv_cache`); False for other precisions and devices,
    whose cache grows as tokens arrive. Every pipeline glm4-edge builds goes through here.
    """
    return (plan.base_device == "CPU" and kv_cache_precision(plan.properties) in prefill.UNSAFE_KV_PRECISIONS
            and presize_kv_cache(scheduler, context))


def model_facts(plan: LoadPlan, pipeline) -> tuple[int, str, list[int]]:
    """(context length, generation prefix, stop ids) from the manifest, or the folder for foreign models."""
    manifest = plan.manifest
    context = plan_context(plan)
    if plan.base_device == "NPU":
        context = plan.properties["MAX_PROMPT_LEN"] + plan.properties["MIN_RESPONSE_LEN"]
    prefix = manifest.generation_prefix if manifest else _template_prefix(pipeline)
    stop_ids = list(manifest.stop_token_ids) if manifest and manifest.stop_token_ids else sorted(
        pipeline.get_generation_config().stop_token_ids)
    return context, prefix, stop_ids


def load(path: str | Path, device: str = DEFAULT_DEVICE, *, max_prompt_len: int | None = None,
         min_response_len: int | None = None, cache: bool = True, warm_up: bool = False,
         draft: str | Path | None = None, prompt_lookup: bool = False,
         properties: dict[str, Any] | None = None,
         fallback_device: str | None = npu_fallback.DEFAULT_FALLBACK_DEVICE) -> Model:
    """Load a converted model folder on `device` ("CPU", "GPU", "GPU.1", "NPU", "AUTO").

    `draft` (a smaller converted model with the same tokenizer, e.g. GLM-4-9B-0414 for GLM-4-32B-0414;
    glm-edge's 59264-token vocabulary is not GLM-4's 151552) enables speculative decoding; a draft
    with another tokenizer raises ModelFormatError naming both vocabulary sizes. `prompt_lookup`
    drafts from n-grams of the prompt (good for summaries and code edits).
    On the NPU, a request over its static shape runs on `fallback_device` ("CPU", "GPU"; None or
    "none": a StaticShapeError instead).
    """
    import openvino_genai

    from .model import Model  # it imports this module for the names it re-exports

    if draft is not None and prompt_lookup:
        raise BadParameterError("choose --draft or --prompt-lookup, not both", "prompt_lookup")
    if (store.resolve(path) / images.LANGUAGE_MODEL_XML).is_file():  # GLM-4V: our own decode loop
        from .vision import load_vision

        if draft is not None or prompt_lookup:
            raise BadParameterError("GLM-4V models do not take --draft or --prompt-lookup yet", "draft")
        return load_vision(plan_load(path, device, max_prompt_len=max_prompt_len, min_response_len=min_response_len,
                                     cache=False, properties=properties), warm_up=warm_up)
    plan = plan_load(path, device, max_prompt_len=max_prompt_len, min_response_len=min_response_len, cache=cache,
                     properties=properties)
    if plan.base_device == "NPU":
        npu_fallback.check_fallback_device(fallback_device)  # before minutes of NPU compilation
    props = plan.properties
    if plan.base_device in ("CPU", "GPU"):
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True  # multi-turn chats reuse the history's KV cache
        props.setdefault("scheduler_config", scheduler)
    kv_fixed = size_unsafe_kv_cache(plan, props.get("scheduler_config"), plan_context(plan))
    if draft is not None:
        draft_folder = store.find(draft) or Path(draft).expanduser()
        if not (draft_folder / "openvino_model.xml").is_file():
            raise ModelFormatError(f"--draft {draft_folder} is not a converted model folder")
        prompting.check_draft_tokenizer(plan.folder, draft_folder)
        target = plan.base_device if plan.base_device != "AUTO" else "CPU"
        props["draft_model"] = openvino_genai.draft_model(str(draft_folder), target)
    if prompt_lookup:
        props["prompt_lookup"] = True
    pipeline, load_s = open_pipeline(plan, lambda: openvino_genai.LLMPipeline(str(plan.folder), plan.device,
                                                                               **props))
    model = Model(plan.folder, plan.device, pipeline, plan.manifest, load_s, *model_facts(plan, pipeline))
    model.assisted = "draft" if draft is not None else ("prompt_lookup" if prompt_lookup else None)
    if plan.base_device == "NPU":
        shape = npu_fallback.StaticShape(props["MAX_PROMPT_LEN"], props["MIN_RESPONSE_LEN"])
        npu_fallback.attach(model, shape, fallback_device, context_length=plan_context(plan), cache=cache)
    model.kv_cache_precision, model.kv_cache_fixed = kv_cache_precision(props), kv_fixed
    if kv_fixed and props["scheduler_config"].num_kv_blocks:
        model.kv_cache_tokens = props["scheduler_config"].num_kv_blocks * prefill.CPU_KV_BLOCK_TOKENS
    if warm_up:
        model.warm_up()
    return model


def _config_context(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text())
        return rope.context_window(config) or DEFAULT_CONTEXT  # YaRN factor x original window counts
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONTEXT


def _template_prefix(pipeline) -> str:
    """A model converted by other tools: find what its chat template writes for the assistant turn."""
    tokenizer = pipeline.get_tokenizer()
    try:
        messages = [{"role": "user", "content": "ping"}]
        without = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        with_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except RuntimeError:
        return glm_format.DEFAULT_GENERATION_PREFIX
    suffix = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    return suffix if suffix.startswith("<|assistant|>") else glm_format.DEFAULT_GENERATION_PREFIX
