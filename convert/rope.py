"""Keep the RoPE frequencies in f32: the fp16 IR rounds them, and the rounding grows with position.

optimum's fp16 export stores the rotary embedding's `inv_freq` (1/theta^(2i/d), transformers'
`*RotaryEmbedding.inv_freq`, shape [1, d/2, 1] in the IR) as an f16 constant. Its relative rounding
error, up to 2^-11 ~ 4.9e-4, multiplies the position: the angle of a token m positions away drifts
by m * inv_freq * 4.9e-4 radians, about 0.05 rad at m = 128 and radians past a few thousand tokens
for the mid frequencies. Measured on a 1-layer GLM-4-9B-shaped model in f32 arithmetic, 128 tokens:
relative logit RMSE against PyTorch 0.0069 with the f16 constant, 5.9e-6 with f32 (8 layers with
heavy-tailed weights: 0.48). Nothing in OpenVINO's CPU plugin needs the f16 copy, so convert puts
transformers' exact f32 values back. (NNCF compresses only weights and leaves this constant alone.)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np


def reference_inv_freq(folder: Path) -> np.ndarray | None:
    """transformers' inv_freq (float32, shape [d/2]) for the exported checkpoint's config, or None when
    the model type has no rotary embedding class (nothing to restore)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    try:
        module = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    except ImportError:
        return None
    classes = [getattr(module, name) for name in dir(module) if name.endswith("RotaryEmbedding")]
    if not classes:
        return None
    return classes[0](config).inv_freq.float().numpy()


def restore_inv_freq(model: Any, inv_freq: np.ndarray) -> int:
    """Replace every f16 constant of `model` (an ov.Model) that holds `inv_freq` rounded to f16, and feeds
    a Convert, by an f32 constant of the exact values. Returns how many were replaced (0 when the IR
    already keeps them in f32)."""
    import openvino as ov
    import openvino.opset13 as ops

    rounded = inv_freq.astype(np.float16)
    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant" or node.get_output_element_type(0) != ov.Type.f16:
            continue
        shape = list(node.get_output_shape(0))
        if int(np.prod(shape)) != inv_freq.size or not np.array_equal(node.get_data().ravel(), rounded):
            continue
        exact = ops.constant(inv_freq.reshape(shape).astype(np.float32))
        exact.set_friendly_name(node.get_friendly_name() + "/f32")
        for target in list(node.output(0).get_target_inputs()):
            consumer = target.get_node()
            if consumer.get_type_name() == "Convert" and consumer.get_output_element_type(0) == ov.Type.f32:
                for reader in list(consumer.output(0).get_target_inputs()):
                    reader.replace_source_output(exact.output(0))
                replaced += 1
    return replaced


def restore_in_ir(xml: Path, folder: Path) -> int:
    """restore_inv_freq on an IR on disk (rewritten in place, through a temporary file)."""
    import os

    import openvino as ov

    inv_freq = reference_inv_freq(folder)
    if inv_freq is None:
        return 0
    model = ov.Core().read_model(xml)
    replaced = restore_inv_freq(model, inv_freq)
    if replaced:
        temp = xml.with_name(xml.stem + ".rope.xml")
        ov.save_model(model, temp, compress_to_fp16=False)
        del model
        for suffix in (".xml", ".bin"):
            os.replace(temp.with_suffix(suffix), xml.with_suffix(suffix))
    return replaced
