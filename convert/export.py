"""The conversion pipeline: source -> staged HF folder -> OpenVINO IR -> NNCF -> tokenizers -> manifest.

Everything is written into a hidden temporary sibling of the output and renamed into place at the
end, so an interrupted or failed conversion leaves neither a partial model nor temp litter.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
import resource
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from glm4_edge.errors import BadParameterError, ModelFormatError
from glm4_edge.glm_format import DEFAULT_GENERATION_PREFIX, STOP_TOKENS, THINK_OPEN
from glm4_edge.integrity import file_table
from glm4_edge.manifest import MANIFEST_NAME, Compression, Manifest

from . import calibration, families, lora, presets, rope, vision_export
from .source import (  # noqa: F401 - content_hash: `glm4-edge run` reads it from here
    Progress,
    _count_parameters,
    check_resources,
    content_hash,
    default_output,
    prepare_source,
    reduction_channels,
    resolve_source,
    resource_needs,
)
from .staging import check_output, publish, staging_folder

DEFAULT_MODELS_DIR = Path("models")
MAX_CONTEXT = 1 << 20


NPU_VISION_TEXT_TOKENS = 256  # room for the question and a short history beside a GLM-4V image, on the NPU
NPU_PROMPT_BLOCK = 256  # NPU static prompt lengths in whole blocks, as the defaults 1024/256 are


@dataclass
class ConvertOptions:
    source: str
    output: Path | None = None
    weight_format: str = "int4"
    device: str = "cpu"
    group_size: int | None = None
    ratio: float | None = None
    sym: bool | None = None
    all_layers: bool | None = None
    awq: bool = False
    scale_estimation: bool = False
    dataset: str | None = None
    backup_precision: str | None = None
    fast: bool = False  # the speed-first preset (channel-wise INT4), coarser than Q4_0
    context: int | None = None
    adapter: Path | None = None
    revision: str | None = None
    force: bool = False
    npu_max_prompt_len: int = 1024
    npu_min_response_len: int = 256
    models_dir: Path = DEFAULT_MODELS_DIR
    check_resources: bool = True


@dataclass
class ConvertResult:
    output: Path
    manifest: Manifest
    seconds: float
    peak_rss_bytes: int
    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was adapted on the way (e.g. the group size)


def convert(options: ConvertOptions, progress: Progress | None = None) -> ConvertResult:
    progress = progress or (lambda message: None)
    start = time.perf_counter()
    stages: dict[str, float] = {}
    source_folder, source_meta = resolve_source(options, progress)
    source = families.detect_family(source_folder, name_hint=options.source)
    parameters = _count_parameters(source.config, source.family)
    settings = presets.resolve(
        options.device, options.weight_format, group_size=options.group_size, ratio=options.ratio, sym=options.sym,
        all_layers=options.all_layers, awq=options.awq, scale_estimation=options.scale_estimation,
        dataset=options.dataset, backup_precision=options.backup_precision, num_parameters=parameters,
        fast=options.fast)
    settings, notes, adjust_groups = presets.adapt_group_size(
        settings, options.device, reduction_channels(source.config, source.family))
    if options.context is not None and not 512 <= options.context <= MAX_CONTEXT:
        raise BadParameterError(f"--context {options.context} must be between 512 and {MAX_CONTEXT} tokens",
                                "context")
    if settings.dataset and settings.dataset != "builtin":
        calibration.load_texts(settings.dataset)  # refuse a bad file before hours of export
    adapter = lora.load(options.adapter) if options.adapter else None
    output = Path(options.output) if options.output else default_output(source_folder, options)
    check_output(output, options.force)
    source_bytes = families.checkpoint_bytes(source_folder)
    if options.check_resources:
        need_disk, need_ram = resource_needs(source, source_bytes, settings.weight_format,
                                             staged_copy=source.family == "chatglm" or adapter is not None)
        check_resources(source_bytes, output.parent, need_disk, need_ram)
    families.check_shards(source_folder)
    if source.vision:
        vision_export.check_source(source_folder)

    with staging_folder(output) as temp:
        staged = temp / "_source"
        staged.mkdir()
        timer = time.perf_counter()
        progress(f"preparing the {source.family} checkpoint")
        export_folder, config = prepare_source(source, staged, adapter, options)
        if adapter is not None:
            adapter.check_used()
        stages["prepare"] = time.perf_counter() - timer

        timer = time.perf_counter()
        progress("exporting to OpenVINO IR")
        export_ir(export_folder, temp, fp16=settings.weight_format == "fp16")
        if settings.weight_format == "fp16":  # compress_ir does it for the other formats, at no extra write
            rope.restore_in_ir(temp / "openvino_model.xml", export_folder)
        stages["export"] = time.perf_counter() - timer

        timer = time.perf_counter()
        error: dict[str, Any] = {}
        if settings.weight_format != "fp16":
            progress(f"compressing weights: {presets.describe(settings)}")
            compress_ir(temp, export_folder, settings, adjust_groups=adjust_groups)
        stages["compress"] = time.perf_counter() - timer
        if settings.weight_format != "fp16":
            timer = time.perf_counter()
            progress("measuring the weight error against the checkpoint")
            error = measure_weight_error(temp, export_folder)
            stages["weight_error"] = time.perf_counter() - timer

        progress("checking tokenizer and detokenizer")
        ensure_tokenizers(temp, export_folder)
        stop_ids = write_generation_config(temp, export_folder)
        prefix = generation_prefix(export_folder)
        bits = bits_table(temp / "openvino_model.xml")
        vision: dict[str, Any] = {}
        if source.vision:  # the language model is done and released: now the vision tower, on its own
            timer = time.perf_counter()
            vision = vision_export.finish_vision(temp, source_folder, export_folder, settings.weight_format,
                                                 progress, symmetric=options.device == "npu")
            stages["vision"] = time.perf_counter() - timer
        shutil.rmtree(staged)
        npu_prompt_len = options.npu_max_prompt_len
        if options.device == "npu" and vision and npu_prompt_len < vision_prompt_len(vision):
            npu_prompt_len = vision_prompt_len(vision)
            notes.append(f"NPU MAX_PROMPT_LEN {options.npu_max_prompt_len} -> {npu_prompt_len}: an image alone "
                         f"takes {vision['feature_tokens']} prompt tokens")

        output_bytes = sum(p.stat().st_size for p in temp.rglob("*") if p.is_file())
        progress("recording SHA-256 checksums")
        files = file_table(temp)  # last, so that they describe exactly what is renamed into place
        manifest = Manifest(
            name=output.name,
            family=source.family,
            source={**source_meta, "adapter": str(options.adapter) if options.adapter else None},
            target_device=options.device,
            preset=presets.preset_name(options.device, options.fast),
            compression=Compression(
                weight_format=settings.weight_format,
                group_size=None if settings.weight_format == "fp16" else settings.group_size,
                ratio=None if settings.weight_format == "fp16" else settings.ratio,
                sym=None if settings.weight_format == "fp16" else settings.sym,
                all_layers=None if settings.weight_format == "fp16" else settings.all_layers,
                awq=settings.awq, scale_estimation=settings.scale_estimation, dataset=settings.dataset,
                backup_precision=None if settings.weight_format == "fp16" else settings.backup_precision,
                bits_table=bits, weight_error=error,
            ),
            context_length=families.context_window(config),
            rope_scaling=entry if families.rope_type(entry := families.rope_entry(config)) != "default" else None,
            reasoning=source.reasoning or THINK_OPEN in prefix,
            generation_prefix=prefix,
            stop_token_ids=stop_ids,
            npu={"max_prompt_len": npu_prompt_len, "min_response_len": options.npu_min_response_len}
            if options.device == "npu" else {},
            size_bytes={"source": source_bytes, "output": output_bytes},
            versions=package_versions(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            files=files,
            vision=vision,
        )
        manifest.write(temp)
        progress("finishing")
        publish(temp, output)
    return ConvertResult(output, manifest, time.perf_counter() - start, peak_rss_bytes(), stages, notes)


def vision_prompt_len(vision: dict[str, Any]) -> int:
    """The smallest NPU MAX_PROMPT_LEN for a GLM-4V model: its image's feature tokens plus room for text,
    in whole blocks (glm-4v-9b: 1602 + 256 -> 2048)."""
    needed = int(vision["feature_tokens"]) + NPU_VISION_TEXT_TOKENS
    return -(-needed // NPU_PROMPT_BLOCK) * NPU_PROMPT_BLOCK


# --- export and compression -----------------------------------------------------------------------

def export_ir(folder: Path, out: Path, fp16: bool) -> None:
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    # An explicit OVConfig without quantization stops optimum from INT8-compressing >1B models on its
    # own: compression is done once, below, with the settings the user chose.
    with warnings.catch_warnings(), _quiet_transformers(), _quiet_logger("torch.utils.cpp_extension"):
        warnings.simplefilter("ignore")  # torch.jit tracer chatter that users cannot act on
        main_export(str(folder), out, task="text-generation-with-past",
                    ov_config=OVConfig(dtype="fp16" if fp16 else None), convert_tokenizer=True,
                    library_name="transformers")
    gc.collect()


@contextmanager
def _quiet_logger(name: str, level: int = logging.WARNING + 10):
    """Raise one library logger's threshold for a block. Used for torch's "No CUDA runtime is found"
    (a CPU-only conversion needs no CUDA) and NNCF's INFO bit-width table (convert prints its own)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def compress_ir(out: Path, source_folder: Path, settings: presets.CompressionSettings,
                adjust_groups: bool = False) -> None:
    """Compress the IR's weights in place with NNCF; `adjust_groups` lets NNCF shrink the group size of
    layers it does not divide (`presets.adapt_group_size` says which)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    xml = out / "openvino_model.xml"
    model = core.read_model(xml)
    kwargs: dict[str, Any] = {}
    if settings.weight_format == "int8":
        mode = nncf.CompressWeightsMode.INT8_SYM if settings.sym else nncf.CompressWeightsMode.INT8_ASYM
    else:
        if settings.int4_mode != "int":
            mode = nncf.CompressWeightsMode(settings.int4_mode)  # NF4 / CB4: no zero point, `sym` does not apply
        else:
            mode = nncf.CompressWeightsMode.INT4_SYM if settings.sym else nncf.CompressWeightsMode.INT4_ASYM
        kwargs.update(group_size=settings.group_size, ratio=settings.ratio, all_layers=settings.all_layers,
                      backup_mode=nncf.BackupMode(settings.backup_precision))
        metric = settings.sensitivity_metric
        if settings.data_aware:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source_folder)
            samples = calibration.token_samples(tokenizer, settings.dataset or "builtin")
            kwargs.update(dataset=calibration.nncf_dataset(model, samples), subset_size=len(samples),
                          awq=settings.awq, scale_estimation=settings.scale_estimation, gptq=settings.gptq)
            # With a dataset and no metric NNCF splits the ratio by max_activation_variance; with ratio 1
            # there is no split, so the cheapest metric skips its statistics.
            if metric is None and settings.ratio >= 1.0:
                metric = "weight_quantization_error"
        if metric is not None:
            kwargs["sensitivity_metric"] = nncf.SensitivityMetric(metric)
    if adjust_groups:
        from nncf.quantization.advanced_parameters import GroupSizeFallbackMode

        kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
            min_adjusted_group_size=presets.MIN_ADJUSTED_GROUP_SIZE)
    with _quiet_logger("nncf", logging.WARNING):
        compressed = nncf.compress_weights(model, mode=mode, **kwargs)
    inv_freq = rope.reference_inv_freq(source_folder)
    if inv_freq is not None:
        rope.restore_inv_freq(compressed, inv_freq)
    temp_xml = out / "openvino_model.compressed.xml"
    ov.save_model(compressed, temp_xml, compress_to_fp16=False)
    del compressed, model
    gc.collect()
    for suffix in (".xml", ".bin"):
        os.replace(temp_xml.with_suffix(suffix), xml.with_suffix(suffix))


def measure_weight_error(out: Path, source_folder: Path) -> dict[str, Any]:
    """The weight error summary stored in the manifest; empty when the names do not line up."""
    from glm4_edge import weight_error

    try:
        return weight_error.ir_weight_error(out, source_folder).summary()
    except ModelFormatError:
        return {}


def bits_table(xml: Path) -> list[dict[str, Any]]:
    """Share of weight parameters per precision, read back from the IR (what NNCF's table reports)."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    counts: dict[str, list[int]] = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_partial_shape(0).to_shape())
        if len(shape) < 2 or shape[-1] == 1:
            continue  # zero points and per-channel scales end in a unit axis
        element = op.get_output_element_type(0).get_type_name()
        if element not in ("u4", "i4", "u8", "i8", "f16", "bf16", "f32", "nf4", "f8e4m3"):
            continue
        size = 1
        for dim in shape:
            size *= dim
        if element in ("f16", "bf16", "f32") and size < 4096:
            continue  # scales, zero points and small tables are not weights
        entry = counts.setdefault(element, [0, 0])
        entry[0] += 1
        entry[1] += size
    total = sum(params for _, params in counts.values()) or 1
    names = {"u4": "int4_asym", "i4": "int4_sym", "u8": "int8_asym", "i8": "int8_sym", "f16": "fp16",
             "bf16": "bf16", "f32": "fp32"}
    return [{"precision": names.get(k, k), "tensors": v[0], "parameters": v[1],
             "percent": round(100.0 * v[1] / total, 2)} for k, v in sorted(counts.items(), key=lambda i: -i[1][1])]


# --- tokenizer, generation config, prompt ---------------------------------------------------------

def ensure_tokenizers(out: Path, source_folder: Path) -> None:
    """optimum-intel skips tokenizer conversion silently on failure; convert directly then, or refuse."""
    wanted = [out / "openvino_tokenizer.xml", out / "openvino_detokenizer.xml"]
    if all(p.is_file() for p in wanted):
        return
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(source_folder)
        tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True,
                                                   skip_special_tokens=True)
    except Exception as error:  # any failure here means the model cannot be used: say so
        raise ModelFormatError(f"could not convert the tokenizer of {source_folder} to OpenVINO ({error}); "
                               "check its tokenizer.json") from None
    ov.save_model(tokenizer, wanted[0])
    ov.save_model(detokenizer, wanted[1])


def write_generation_config(out: Path, source_folder: Path) -> list[int]:
    """GLM-4's stop ids, looked up in this tokenizer (tiny test vocabularies number them differently)."""
    vocab_path = source_folder / "tokenizer.json"
    ids = []
    if vocab_path.is_file():
        tokenizer = json.loads(vocab_path.read_text(encoding="utf-8"))
        added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
        ids = [added[t] for t in STOP_TOKENS if t in added]
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if not ids:
        eos = config.get("eos_token_id", [151329, 151336, 151338])
        ids = eos if isinstance(eos, list) else [eos]
    config["eos_token_id"] = ids
    config.setdefault("pad_token_id", ids[0])
    path.write_text(json.dumps(config, indent=2) + "\n")
    return ids


def generation_prefix(folder: Path) -> str:
    """What the checkpoint's template writes after the last turn (`<|assistant|>`, maybe `\\n<think>`)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        messages = [{"role": "user", "content": "ping"}]
        without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # no usable template: the GLM-4 default
        return DEFAULT_GENERATION_PREFIX
    if with_prompt.startswith(without) and with_prompt[len(without):].startswith("<|assistant|>"):
        return with_prompt[len(without):]
    return DEFAULT_GENERATION_PREFIX


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("glm4-edge", "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "nncf",
                 "transformers", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


__all__ = ["ConvertOptions", "ConvertResult", "convert", "MANIFEST_NAME"]
