"""Quantization error: weight error read back from an IR and a GGUF file, and the default preset's quality."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from glm4_edge import weight_error
from glm4_edge.evaluate import output_error

from .conftest import _convert


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A float32 safetensors file, written by hand (the format is an 8-byte length, JSON, raw data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    return path


def test_ir_weight_error_hand_computed(tmp_path):
    """u4 weights, f16 zero point and scale, NNCF's layout: the relative MSE worked out by hand."""
    import openvino as ov
    import openvino.opset13 as ops

    exact = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -0.5, 1.0, -1.0]], np.float32)
    # Row 0: q = 1..4, zero point 0, scale 1.25 -> 1.25, 2.5, 3.75, 5.0 (errors 0.25, 0.5, 0.75, 1.0).
    # Row 1: q = 9, 7, 10, 6, zero point 8, scale 0.5 -> exactly the source row.
    weight = ops.constant(np.array([[1, 2, 3, 4], [9, 7, 10, 6]], np.uint8), ov.Type.u4)
    weight.set_friendly_name("self.model.layers.0.mlp.down_proj.weight")
    zero_point = ops.convert(ops.constant(np.array([[0], [8]], np.uint8), ov.Type.u4), ov.Type.f16)
    scale = ops.constant(np.array([[1.25], [0.5]], np.float16))
    dequantized = ops.multiply(ops.subtract(ops.convert(weight, ov.Type.f16), zero_point), scale)
    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    model = ov.Model([ops.matmul(x, ops.convert(dequantized, ov.Type.f32), False, True)], [x])
    ov.save_model(model, tmp_path / "ir" / "openvino_model.xml", compress_to_fp16=False)
    write_safetensors(tmp_path / "source" / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": exact})

    result = weight_error.ir_weight_error(tmp_path / "ir", tmp_path / "source", sample_rows=None)

    assert [(m.name, m.precision, m.parameters) for m in result.matrices] == [
        ("model.layers.0.mlp.down_proj.weight", "u4", 8)]
    squared_error = 0.25 ** 2 + 0.5 ** 2 + 0.75 ** 2 + 1.0 ** 2  # 1.875
    power = 1 + 4 + 9 + 16 + 0.25 + 0.25 + 1 + 1  # 32.5
    assert result.mean_relative_mse == pytest.approx(squared_error / power, rel=1e-6)
    assert result.worst.relative_mse == pytest.approx(1.875 / 32.5, rel=1e-6)


def _save_matmul(dequantized, folder: Path, columns: int) -> None:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, columns], ov.Type.f32, name="x")
    model = ov.Model([ops.matmul(x, ops.convert(dequantized, ov.Type.f32), False, True)], [x])
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=False)


def _packed(codes: list[list[int]], kind) -> object:
    """A 4-bit Constant of `kind` holding `codes`, packed two per byte, low nibble first."""
    import openvino as ov
    import openvino.opset13 as ops

    flat = np.array(codes, np.uint8).ravel()
    tensor = ov.Tensor(kind, list(np.shape(codes)))
    tensor.data[:] = flat[0::2] | (flat[1::2] << 4)
    return ops.constant(tensor)


def test_ir_weight_error_nf4_hand_computed(tmp_path):
    """NF4 codes (NNCF's NF4 layout: nf4 Constant, Convert, Multiply by the scale) read as QLoRA's levels."""
    import openvino as ov
    import openvino.opset13 as ops

    # QLoRA's NF4 levels 0, 1, 7, 14, 15 (Dettmers et al. 2023), as the f16 Convert stores them.
    level = {k: float(np.float16(v)) for k, v in {0: -1.0, 1: -0.6961928009986877, 7: 0.0,
                                                   14: 0.7229568362236023, 15: 1.0}.items()}
    codes = [[15, 0, 7, 15], [14, 1, 7, 7]]
    scales = [2.0, 1.0]
    exact = np.array([[2.0, -2.0, 0.25, 1.5], [0.75, -0.75, 0.0, 0.5]], np.float32)
    weight = _packed(codes, ov.Type.nf4)
    weight.set_friendly_name("self.model.layers.0.mlp.down_proj.weight")
    scale = ops.constant(np.array([[2.0], [1.0]], np.float16))
    _save_matmul(ops.multiply(ops.convert(weight, ov.Type.f16), scale), tmp_path / "ir", 4)
    write_safetensors(tmp_path / "source" / "model.safetensors", {"model.layers.0.mlp.down_proj.weight": exact})

    result = weight_error.ir_weight_error(tmp_path / "ir", tmp_path / "source", sample_rows=None)

    dequantized = np.array([[level[c] * s for c in row] for row, s in zip(codes, scales, strict=True)])
    assert [(m.name, m.precision, m.parameters) for m in result.matrices] == [
        ("model.layers.0.mlp.down_proj.weight", "nf4", 8)]
    squared_error = 0.25 ** 2 + 0.5 ** 2 + (0.75 - level[14]) ** 2 + (0.75 + level[1]) ** 2 + 0.5 ** 2
    assert float(np.square(dequantized - exact).sum()) == pytest.approx(squared_error)
    assert result.mean_relative_mse == pytest.approx(squared_error / float(np.square(exact).sum()), rel=1e-5)
    # OpenVINO's own NF4 decompression gives the same weights (x = identity reads W' back)
    compiled = ov.Core().compile_model(tmp_path / "ir" / "openvino_model.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(np.eye(4, dtype=np.float32))[0].T, dequantized, rtol=1e-3)


def test_ir_weight_error_codebook_hand_computed(tmp_path):
    """CB4 (NNCF's layout: u4 indices, Convert to u8, Gather from an f8e4m3 codebook, Multiply by the scale)."""
    import openvino as ov
    import openvino.opset13 as ops

    # f8e4m3 bytes: -2 (0xC0), -1 (0xB8), 0, 0.375 (0x2C), 0.5 (0x30), 1 (0x38), 1.5 (0x3C)
    table = ov.Tensor(ov.Type.f8e4m3, [7])
    table.data[:] = np.array([0xC0, 0xB8, 0x00, 0x2C, 0x30, 0x38, 0x3C], np.uint8)
    codebook = ops.constant(table)
    codebook.set_friendly_name("self.model.layers.0.self_attn.q_proj.weight")
    indices = _packed([[5, 0, 2, 3], [6, 1, 4, 4]], ov.Type.u4)
    indices.set_friendly_name("self.model.layers.0.self_attn.q_proj.weight_nncf_codebook_idxs")
    looked_up = ops.gather(ops.convert(codebook, ov.Type.f16), ops.convert(indices, ov.Type.u8), 0)
    # Row 0: scale 1 -> 1, -2, 0, 0.375 (error 0.125 on the third); row 1: scale 2 -> 3, -2, 1, 1 (0.5 on the last).
    scaled = ops.multiply(looked_up, ops.constant(np.array([[1.0], [2.0]], np.float16)))
    _save_matmul(scaled, tmp_path / "ir", 4)
    exact = np.array([[1.0, -2.0, 0.125, 0.375], [3.0, -2.0, 1.0, 1.5]], np.float32)
    write_safetensors(tmp_path / "source" / "model.safetensors", {"model.layers.0.self_attn.q_proj.weight": exact})

    result = weight_error.ir_weight_error(tmp_path / "ir", tmp_path / "source", sample_rows=None)

    assert [(m.name, m.precision, m.parameters) for m in result.matrices] == [
        ("model.layers.0.self_attn.q_proj.weight", "cb4", 8)]
    power = 1 + 4 + 0.125 ** 2 + 0.375 ** 2 + 9 + 4 + 1 + 2.25
    assert result.mean_relative_mse == pytest.approx((0.125 ** 2 + 0.5 ** 2) / power, rel=1e-6)


def test_f8e4m3_decoding_is_openvinos():
    """Every fp8 E4M3 byte decodes as OpenVINO's Convert does (NaN bytes excepted); a few by hand."""
    import openvino as ov
    import openvino.opset13 as ops

    raw = np.arange(256, dtype=np.uint8)
    tensor = ov.Tensor(ov.Type.f8e4m3, [256])
    tensor.data[:] = raw
    model = ov.Model([ops.convert(ops.constant(tensor), ov.Type.f32)], [])
    want = ov.Core().compile_model(model, "CPU")({})[0]
    got = weight_error.f8e4m3_values(raw)
    finite = (raw & 0x7F) != 0x7F
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.isnan(got[~finite]).all()
    np.testing.assert_array_equal(weight_error.f8e4m3_values(np.array([0x01, 0x38, 0xFE], np.uint8)),
                                  np.array([2.0 ** -9, 1.0, -448.0], np.float32))


def test_gguf_weight_error_hand_computed(tmp_path):
    """A Q8_0 block written byte by byte, read back through the gguf package's dequantization."""
    gguf = pytest.importorskip("gguf")

    q = np.arange(32, dtype=np.int8)
    block = np.float16(0.5).tobytes() + q.tobytes()  # Q8_0: fp16 scale d, 32 int8; x = d * q
    raw = np.frombuffer(block * 2, np.uint8).reshape(2, 34)  # 2 rows of 32 weights
    exact = np.tile(0.5 * np.arange(32, dtype=np.float32), (2, 1))
    exact[1, 31] = 15.75  # stored as 15.5: the only error, 0.25
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "glm4")
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_safetensors(tmp_path / "source" / "model.safetensors", {"model.layers.0.self_attn.q_proj.weight": exact})

    result = weight_error.gguf_weight_error(tmp_path / "m.gguf", tmp_path / "source", sample_rows=None)

    power = 2 * 0.25 * sum(k * k for k in range(32)) - 15.5 ** 2 + 15.75 ** 2
    assert [(m.name, m.precision) for m in result.matrices] == [("model.layers.0.self_attn.q_proj.weight", "q8_0")]
    assert result.mean_relative_mse == pytest.approx(0.25 ** 2 / power, rel=1e-6)


def test_q4_0_rounding_is_llama_cpps():
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    rows = np.random.default_rng(0).standard_t(4, (8, 256)).astype(np.float32)
    kind = gguf.GGMLQuantizationType.Q4_0
    np.testing.assert_array_equal(weight_error.q4_0_roundtrip(rows), dequantize(quantize(rows, kind), kind))


@pytest.mark.parametrize("ratio, expected", [(0.004, 0), (0.1, 1), (0.4, 2), (0.7, 3), (1.0, 4), (2.5, 5)])
def test_quality_class_boundaries(ratio, expected):
    assert weight_error.quality_class(ratio) == weight_error.QUALITY_CLASSES[expected]


def test_output_error_metrics_by_hand():
    want = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    same = output_error(want, want)
    assert (same.top1_agreement, same.mean_kl, same.relative_logit_rmse) == (1.0, 0.0, 0.0)
    shifted = output_error(want + 5.0, want)  # a constant shift leaves the distribution alone
    assert shifted.mean_kl == pytest.approx(0.0, abs=1e-12) and shifted.top1_agreement == 1.0
    flipped = output_error(want[:, ::-1], want)
    assert flipped.top1_agreement == 0.0
    assert flipped.relative_logit_rmse == pytest.approx(np.sqrt((4 + 4 + 1 + 1) / (1 + 4 + 1)))


# --- the default preset against grouped rounding, on heavy-tailed weights -------------------------

@pytest.fixture(scope="module")
def heavy_tailed(tmp_path_factory) -> Path:
    from glm4_edge.convert.synthetic import build_checkpoint

    # bf16, like real GLM-4 checkpoints (optimum-intel then names the IR weights differently)
    return build_checkpoint(tmp_path_factory.mktemp("heavy") / "tiny-realistic", "glm4", weights="realistic",
                            dtype="bfloat16")


def _torch_logits(folder: Path, ids: list[int], transform=None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if transform is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.copy_(torch.from_numpy(transform(parameter.numpy())))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_default_preset_beats_q4_0_rounding_on_heavy_tailed_weights(heavy_tailed, tmp_path):
    """The cpu preset's logits are at least as close to the fp32 reference as Q4_0 rounding's (sym groups
    of 32, every matrix, computed here in PyTorch), on a tiny model with Student's t weights and
    outlier input channels. The earlier channel-wise preset fails this (logit RMSE ~1.6x Q4_0's)."""
    from glm4_edge.evaluate import OpenVINOEngine

    converted = _convert(heavy_tailed, tmp_path / "default-int4")
    ids = np.random.default_rng(0).integers(0, 700, 96).tolist()
    reference = _torch_logits(heavy_tailed, ids)
    grouped = output_error(_torch_logits(heavy_tailed, ids, weight_error.q4_0_roundtrip), reference)
    default = output_error(OpenVINOEngine(converted).logits(ids), reference)
    assert default.relative_logit_rmse <= grouped.relative_logit_rmse, (default, grouped)
    assert default.mean_kl <= grouped.mean_kl, (default, grouped)
    manifest = json.loads((converted / "glm4_edge.json").read_text())
    assert manifest["compression"]["weight_error"]["matrices"] == 14  # every matrix found in the bf16 IR
    assert manifest["compression"]["weight_error"]["ratio_to_q4_0"] <= 1.0
    from glm4_edge.model import plan_load

    # group-32 weights: activations quantized per 32 (asking 128 would leave them unquantized)
    assert plan_load(converted, "CPU").properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 32


def test_fast_preset_is_labelled_coarser_than_q4_0(heavy_tailed, tmp_path):
    converted = _convert(heavy_tailed, tmp_path / "fast-int4", fast=True)
    manifest = json.loads((converted / "glm4_edge.json").read_text())
    assert manifest["preset"] == "cpu-fast"
    assert manifest["compression"]["group_size"] == -1
    assert manifest["compression"]["weight_error"]["quality_class"] == "coarser than Q4_0"
    from glm4_edge.model import plan_load

    assert plan_load(converted, "CPU").properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 128
