"""GLM-4V-9B conversion steps: split the language IR for `inputs_embeds`, convert the vision tower.

`export.convert` runs the language model through the same path as legacy glm-4-9b-chat (remap,
optimum export, NNCF presets) and then calls `finish_vision`, which
1. cuts the exported language IR in two: the token-embedding lookup becomes its own IR
   (input_ids -> inputs_embeds) and the stateful language model takes `inputs_embeds` instead of
   `input_ids` (position ids and attention mask stay inputs: the image tokens share one position);
2. builds our PyTorch vision tower (`vision_reference`), converts it with `ov.convert_model` at the
   static shape 1x3xSxS, and compresses it (INT8 for int4/int8 models, fp16 otherwise).
The language export is finished and released before the vision tower is loaded, so the two are
never in memory together.
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from glm4_edge.errors import ModelFormatError
from glm4_edge.images import (
    CLIP_MEAN,
    CLIP_STD,
    LANGUAGE_MODEL_XML,
    TEXT_EMBEDDINGS_XML,
    VISION_ENCODER_XML,
)

EXPORTED_XML = "openvino_model.xml"
# Above this many float32 bytes the tower is traced in float16, so that a 4.5B-parameter tower needs
# ~9 GB rather than ~18 GB. Not bfloat16 (the checkpoint's dtype): OpenVINO 2026.4.1 computes a
# bf16-traced tower wrongly (NaN on the tiny test tower), an fp16-traced one within 1e-4 of float32;
# the vision tower's weights are well inside fp16's range.
FLOAT32_TRACE_LIMIT_BYTES = 4 << 30
# RAM of the vision stage (`tower_ram_bytes`): a base plus, per tower parameter, the traced weights (2 bytes
# in fp16, 4 in f32; the IR shares them with torch) and what NNCF's INT8 compression adds while both
# copies live. Measured on glm-4v-9b-width towers of 2 and 8 blocks (0.36B and 0.77B parameters, fp16):
# anonymous peaks 1.85 and 2.92 GB, i.e. 2.62 bytes a parameter plus 0.9 GB (Python, torch, OpenVINO,
# NNCF), so ~12.7 GB for the 4.51B-parameter tower; the language model is released before this stage.
TOWER_RAM_BASE_BYTES = 1_000_000_000
TOWER_RAM_INT8_COPY = 0.65


def check_source(folder: Path) -> None:
    """Refuse a GLM-4V checkpoint whose vision part cannot convert, before the language model's long export:
    an incomplete `vision_config`, or no `transformer.vision.*` tensor in its safetensors shards."""
    from safetensors import safe_open

    from .families import read_config, weight_files
    from .vision_reference import VISION_PREFIX, VisionConfig

    VisionConfig.of(read_config(folder))
    for file in weight_files(folder):
        if file.suffix != ".safetensors":
            continue
        with safe_open(str(file), framework="pt") as handle:
            if any(name.startswith(VISION_PREFIX) for name in handle.keys()):
                return
    raise ModelFormatError(f"{folder} has a vision_config but no {VISION_PREFIX}* tensors in *.safetensors shards; "
                           "download the checkpoint's safetensors files completely")


def _embedding_gather(parameter):
    """The Gather that looks up `input_ids` in the embedding table (through Converts)."""
    frontier = [parameter]
    while frontier:
        node = frontier.pop()
        for output in node.outputs():
            for target in output.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_type_name() == "Gather" and target.get_index() == 1:
                    return consumer
                if consumer.get_type_name() == "Convert":
                    frontier.append(consumer)
    raise ModelFormatError("the exported language model has no embedding lookup on input_ids; cannot split it")


def split_language_model(out: Path) -> None:
    """Turn `openvino_model.xml` into the text-embedding IR and the `inputs_embeds` language IR (in place)."""
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    xml = out / EXPORTED_XML
    model = core.read_model(xml)
    parameter = model.input("input_ids").get_node()
    gather = _embedding_gather(parameter)
    gather.output(0).get_tensor().set_names({"inputs_embeds"})
    embeddings = ov.Model([gather.output(0)], [parameter], "text_embeddings")
    ov.save_model(embeddings, out / TEXT_EMBEDDINGS_XML, compress_to_fp16=False)
    del embeddings, model, gather, parameter
    gc.collect()

    model = core.read_model(xml)  # fresh: the embedding model above shares nodes with the first read
    parameter = model.input("input_ids").get_node()
    gather = _embedding_gather(parameter)
    hidden = gather.output(0).get_partial_shape()[2]
    embeds = ops.parameter(ov.PartialShape([-1, -1, hidden]), gather.output(0).get_element_type(),
                           name="inputs_embeds")
    gather.output(0).replace(embeds.output(0))
    embeds.output(0).get_tensor().set_names({"inputs_embeds"})  # after replace(), which moves the old names
    # What else read input_ids only wanted its shape ([batch, sequence]): give it a tensor of that shape.
    batch_sequence = ops.gather(ops.shape_of(embeds, "i64"), ops.constant([0, 1], ov.Type.i64),
                                ops.constant(0, ov.Type.i64))
    parameter.output(0).replace(ops.broadcast(ops.constant(0, ov.Type.i64), batch_sequence).output(0))
    model.remove_parameter(parameter)
    model.add_parameters([embeds])
    model.validate_nodes_and_infer_types()
    ov.save_model(model, out / LANGUAGE_MODEL_XML, compress_to_fp16=False)
    del model
    gc.collect()
    for suffix in (".xml", ".bin"):
        (out / EXPORTED_XML).with_suffix(suffix).unlink()


def convert_vision_tower(source_folder: Path, out: Path, weight_format: str, symmetric: bool = False) -> str:
    """Write the vision-encoder IR (pixel_values [1,3,S,S] f32 -> image_features [1,T,hidden]); its format."""
    import nncf
    import openvino as ov
    import torch

    from .families import read_config
    from .vision_reference import VisionConfig, load_vision_tower

    raw_config = read_config(source_folder)
    config = VisionConfig.of(raw_config)
    dtype = torch.float32 if 4 * tower_parameters(raw_config) <= FLOAT32_TRACE_LIMIT_BYTES else torch.float16
    tower = load_vision_tower(source_folder, dtype)
    size = config.image_size
    example = torch.zeros(1, config.in_channels, size, size, dtype=dtype)
    # torch.export traces with fake tensors: no forward pass runs. TorchScript tracing (convert_model's
    # default for a module) runs one, which for glm-4v-9b's tower is ~73 TFLOP at 6401 tokens, in float16:
    # PyTorch's CPU float16 matmul is a slow fallback (one 1601x1792x15360 product did not finish in 5
    # minutes on this project's machine, 2.3 s in float32), so the trace would take hours to days.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about shape arithmetic, which the static shape makes exact
        model = ov.convert_model(torch.export.export(tower, (example,)))
    del tower
    gc.collect()
    model.reshape({model.inputs[0]: ov.PartialShape([1, config.in_channels, size, size])})
    model.inputs[0].get_tensor().set_names({"pixel_values"})
    model.outputs[0].get_tensor().set_names({"image_features"})
    if dtype != torch.float32:  # the runtime feeds float32 pixels
        from openvino.preprocess import PrePostProcessor

        process = PrePostProcessor(model)
        process.input().tensor().set_element_type(ov.Type.f32)
        process.output().tensor().set_element_type(ov.Type.f32)
        model = process.build()
    vision_format = "fp16" if weight_format == "fp16" else "int8"
    if vision_format == "int8":
        # The NPU's weight formats are symmetric (as for its INT4 language weights); CPU and GPU take asymmetric.
        mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
        with _quiet_nncf():  # its INFO bit-width table; convert prints its own progress
            model = nncf.compress_weights(model, mode=mode)
    ov.save_model(model, out / VISION_ENCODER_XML, compress_to_fp16=True)
    del model
    gc.collect()
    return vision_format


def _quiet_nncf():
    from .export import _quiet_logger

    return _quiet_logger("nncf", logging.WARNING)


def tower_parameters(config: dict[str, Any]) -> int:
    """Parameters of the checkpoint's vision tower, from its config.json (4.51B for glm-4v-9b).

    Every `transformer.vision.*` tensor: patch embedding and positions, the blocks (weights, biases,
    LayerNorms), the 2x2 conv, the GLU projection and boi/eoi. Raises ModelFormatError for an
    incomplete `vision_config`.
    """
    from .vision_reference import VisionConfig

    c = VisionConfig.of(config)
    h, ffn, th, tffn = c.hidden_size, c.intermediate_size, c.text_hidden_size, c.text_ffn_hidden_size
    block = 4 * h * h + 2 * h * ffn + 9 * h + ffn
    patches = h * c.in_channels * c.patch_size ** 2 + 2 * h + (c.grid * c.grid + 1) * h
    projection = 4 * h * th + th + th * th + 2 * th + 3 * th * tffn + 2 * th
    return c.num_hidden_layers * block + patches + projection


def checkpoint_tower_bytes(config: dict[str, Any]) -> int:
    """Bytes of the vision tower in the checkpoint's shards (its `torch_dtype`; glm-4v-9b: bf16, 9.0 GB)."""
    itemsize = 4 if str(config.get("torch_dtype", "bfloat16")) == "float32" else 2
    return itemsize * tower_parameters(config)


def tower_ram_bytes(config: dict[str, Any], weight_format: str) -> int:
    """Anonymous memory the vision stage needs (no margin): the tower in its trace dtype, held by the traced
    IR, plus NNCF's INT8 copy (int4/int8 models), plus activations; see TOWER_RAM_* for the measurement."""
    parameters = tower_parameters(config)
    trace_itemsize = 4 if 4 * parameters <= FLOAT32_TRACE_LIMIT_BYTES else 2
    per_parameter = trace_itemsize + (TOWER_RAM_INT8_COPY if weight_format != "fp16" else 0.0)
    return int(TOWER_RAM_BASE_BYTES + per_parameter * parameters)


def tower_ir_bytes(config: dict[str, Any], weight_format: str) -> int:
    """Disk of the vision-encoder IR: INT8 (one byte a parameter) or fp16 (two)."""
    return (2 if weight_format == "fp16" else 1) * tower_parameters(config)


def finish_vision(out: Path, source_folder: Path, tokenizer_folder: Path, weight_format: str,
                  progress, symmetric: bool = False) -> dict[str, Any]:
    """Split the language IR, convert the vision tower (`symmetric` INT8 for the NPU); the manifest's
    `vision` entry."""
    from .families import read_config
    from .vision_reference import VisionConfig

    config = read_config(source_folder)
    vision = VisionConfig.of(config)
    progress("splitting the language model for image embeddings")
    split_language_model(out)
    progress("converting the vision encoder")
    vision_format = convert_vision_tower(source_folder, out, weight_format, symmetric)
    ids = _special_ids(tokenizer_folder)
    boi = int(config.get("boi_token_id", ids.get("<|begin_of_image|>", -1)))
    eoi = int(config.get("eoi_token_id", ids.get("<|end_of_image|>", -1)))
    if ids and (ids.get("<|begin_of_image|>") != boi or ids.get("<|end_of_image|>") != eoi):
        raise ModelFormatError(f"{source_folder}: config.json's boi/eoi token ids ({boi}, {eoi}) are not the "
                               "tokenizer's <|begin_of_image|>/<|end_of_image|>; re-download the checkpoint")
    return {
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "image_tokens": vision.image_tokens,
        "feature_tokens": vision.feature_tokens,
        "hidden_size": vision.text_hidden_size,
        "boi_token_id": boi,
        "eoi_token_id": eoi,
        "placeholder_token_id": int(ids.get("<|endoftext|>", 151329)),
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "resample": "bicubic",
        "position_ids": "shared",  # all image tokens at one position, as THUDM's modeling_chatglm.py
        "weight_format": vision_format,
        "symmetric": symmetric and vision_format == "int8",
    }


def _special_ids(folder: Path) -> dict[str, int]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return {}
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    return {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", [])}
