"""How far a converted model's weights are from its source checkpoint: relative MSE per matrix.

For every compressed matrix of an OpenVINO IR (NNCF's layout: an integer or NF4 Constant, or CB4's
4-bit indices Gathered from an fp8 codebook; Convert, an optional Subtract of the zero point, Multiply
by the scale, an optional Reshape from groups) or of a
GGUF file (dequantized by the `gguf` package), the dequantized weights are compared with the
checkpoint's: relative MSE = sum((W_q - W)^2) / sum(W^2). Rows are sampled evenly (`sample_rows`)
because every format here quantizes rows independently, so a row sample is an unbiased estimate at a
fraction of the cost; pass `sample_rows=None` for every row.

The same rows are also rounded with llama.cpp's Q4_0 rule (`q4_0_roundtrip`), so each model carries a
ruler from its own weights: `quality_class` names the error class from the ratio to Q4_0 and from the
Q4_K_M / Q4_0 ratio measured in docs/benchmarks.md. Runtime module: numpy and openvino only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError

DEFAULT_SAMPLE_ROWS = 256
Q4_0_BLOCK = 32
# llama.cpp's formats as ratios of their mean weight relative MSE to Q4_0 rounding of the same rows,
# measured on GLM-4-9B's layer shapes (docs/benchmarks.md, "Quality"; Gaussian / heavy-tailed weights):
# Q8_0 0.004 / 0.004, Q5_K_M 0.146 / 0.114, Q4_K_M 0.517 / 0.406. The Q4_K_M bound is the heavy-tailed
# one (the statistic real weights resemble, and the stricter); each class allows 10% over its format.
Q8_0_TO_Q4_0 = 0.004
Q5_K_M_TO_Q4_0 = 0.146
Q4_K_M_TO_Q4_0 = 0.406
QUALITY_CLASSES = ("about Q8_0 error", "about Q5_K_M error or better", "about Q4_K_M error or better",
                   "between Q4_K_M and Q4_0", "about Q4_0 error", "coarser than Q4_0")
_INT_TYPES = {"u4", "i4", "u8", "i8", "nf4", "u2", "f4e2m1"}
_DECOMPRESSION_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Gather"}
# NF4's 16 levels (QLoRA, Dettmers et al. 2023; bitsandbytes' table, which OpenVINO's ConvertNF4 uses):
# a 4-bit code k stands for NF4_LEVELS[k] times the group's scale.
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
# NNCF names the 4-bit indices of a codebook (CB4) weight after the weight, with this suffix.
_CODEBOOK_INDEX_SUFFIX = "_nncf_codebook_idxs"


@dataclass
class MatrixError:
    name: str  # the checkpoint's tensor name, e.g. model.layers.0.mlp.down_proj.weight
    precision: str  # the stored element type: i4, u4, i8, u8, nf4, cb4 (IR) or q4_K, q6_K, ... (GGUF)
    parameters: int
    relative_mse: float
    q4_0_relative_mse: float  # the same rows rounded with llama.cpp's Q4_0 rule


@dataclass
class WeightError:
    """Per-matrix errors and their summary; `ratio_to_q4_0` compares like with like (same rows)."""

    matrices: list[MatrixError] = field(default_factory=list)

    @property
    def mean_relative_mse(self) -> float:
        return float(np.mean([m.relative_mse for m in self.matrices])) if self.matrices else 0.0

    @property
    def worst(self) -> MatrixError | None:
        return max(self.matrices, key=lambda m: m.relative_mse) if self.matrices else None

    @property
    def ratio_to_q4_0(self) -> float:
        reference = float(np.mean([m.q4_0_relative_mse for m in self.matrices])) if self.matrices else 0.0
        return self.mean_relative_mse / reference if reference else 0.0

    @property
    def quality_class(self) -> str:
        return quality_class(self.ratio_to_q4_0)

    def summary(self) -> dict[str, Any]:
        worst = self.worst
        return {"matrices": len(self.matrices), "mean_relative_mse": round(self.mean_relative_mse, 6),
                "worst_matrix": worst.name if worst else None,
                "worst_relative_mse": round(worst.relative_mse, 6) if worst else None,
                "ratio_to_q4_0": round(self.ratio_to_q4_0, 3), "quality_class": self.quality_class}

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_matrix": [asdict(m) for m in self.matrices]}


def quality_class(ratio_to_q4_0: float) -> str:
    """The error class from the mean relative MSE over Q4_0's on the same weights (1.0 = Q4_0)."""
    bounds = (5 * Q8_0_TO_Q4_0, 1.1 * Q5_K_M_TO_Q4_0, 1.1 * Q4_K_M_TO_Q4_0, 0.85, 1.15)
    for bound, name in zip(bounds, QUALITY_CLASSES, strict=False):
        if ratio_to_q4_0 <= bound:
            return name
    return QUALITY_CLASSES[-1]


def relative_mse(approx: np.ndarray, exact: np.ndarray) -> float:
    """sum((approx - exact)^2) / sum(exact^2), in float64; 0.0 for an all-zero `exact`."""
    approx, exact = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {approx.shape} vs {exact.shape}")
    power = float(np.square(exact).sum())
    return float(np.square(approx - exact).sum()) / power if power else 0.0


def q4_0_roundtrip(rows: np.ndarray) -> np.ndarray:
    """`rows` [n, k] (k a multiple of 32) quantized and dequantized by llama.cpp's Q4_0 rule.

    ggml-quants.c quantize_row_q4_0_ref: per block of 32, d = (the value of largest magnitude) / -8;
    q = min(15, trunc(x / d + 8.5)); d is stored as fp16 and x' = (q - 8) * fp16(d).
    """
    rows = np.asarray(rows, np.float32)
    n, k = rows.shape
    blocks = rows.reshape(n, k // Q4_0_BLOCK, Q4_0_BLOCK)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
    d = peak / np.float32(-8.0)
    inverse = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, np.trunc(blocks * inverse + np.float32(8.5)))
    return ((q - 8.0) * d.astype(np.float16).astype(np.float32)).reshape(n, k)  # d is stored as fp16


# --- the source checkpoint ------------------------------------------------------------------------

class Checkpoint:
    """Tensors of a Hugging Face safetensors checkpoint, read row by row from memory maps (bf16 too)."""

    _DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tensors: dict[str, tuple[Path, str, list[int], int]] = {}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ModelFormatError(f"{self.folder} holds no .safetensors files; give the checkpoint the model "
                                   "was converted from")
        for file in files:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            for name, info in header.items():
                if name != "__metadata__":
                    start = 8 + length + info["data_offsets"][0]
                    self.tensors[name] = (file, info["dtype"], info["shape"], start)

    def shape(self, name: str) -> list[int] | None:
        entry = self.tensors.get(name)
        return entry[2] if entry else None

    def rows(self, name: str, index: np.ndarray | None = None) -> np.ndarray:
        """Rows `index` (all when None) of a 2-D tensor as float32."""
        file, dtype, shape, start = self.tensors[name]
        if dtype not in self._DTYPES:
            raise ModelFormatError(f"{name} is stored as {dtype}; weight error reads BF16, F16 and F32")
        data = np.memmap(file, dtype=self._DTYPES[dtype], mode="r", offset=start, shape=tuple(shape))
        picked = np.asarray(data if index is None else data[index])
        if dtype == "BF16":
            return (picked.astype(np.uint32) << 16).view(np.float32)
        return picked.astype(np.float32)


def sample_index(rows: int, sample_rows: int | None) -> np.ndarray:
    if sample_rows is None or rows <= sample_rows:
        return np.arange(rows)
    return np.unique(np.linspace(0, rows - 1, sample_rows).round().astype(np.int64))


def _matrix_error(name: str, precision: str, approx: np.ndarray, exact: np.ndarray, rows: int) -> MatrixError:
    columns = exact.shape[1]
    reference = q4_0_roundtrip(exact) if columns % Q4_0_BLOCK == 0 else exact
    return MatrixError(name, precision, rows * columns, relative_mse(approx, exact), relative_mse(reference, exact))


# --- OpenVINO IR ----------------------------------------------------------------------------------

def f8e4m3_values(raw: np.ndarray) -> np.ndarray:
    """fp8 E4M3 bytes (OCP 8-bit floating point, the "fn" variant OpenVINO's f8e4m3 is) as float32:
    1 sign bit, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0 is subnormal (mantissa / 8 * 2^-6),
    S.1111.111 is NaN and there is no infinity."""
    raw = np.asarray(raw, np.uint8).astype(np.int32)
    sign = np.where(raw & 0x80, -1.0, 1.0)
    exponent, mantissa = (raw >> 3) & 0x0F, raw & 0x07
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent - 7.0)
    value = sign * np.where(exponent == 0, mantissa / 8.0 * 2.0 ** -6, normal)
    return np.where((raw & 0x7F) == 0x7F, np.nan, value).astype(np.float32)


def _constant_values(node, index: np.ndarray | None = None) -> np.ndarray:
    """A Constant's values (rows `index` of axis 0 only, when given) as numbers; 4-bit types arrive
    packed two per byte, low nibble first, and are cut to the rows before unpacking. NF4 codes come back
    as their levels (NF4_LEVELS), f8e4m3 bytes as the numbers they encode."""
    kind = node.get_output_element_type(0).get_type_name()
    shape = tuple(node.get_output_shape(0))
    data = np.asarray(node.data)
    rows = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if kind == "f8e4m3":
        values = f8e4m3_values(data.view(np.uint8)).reshape(shape)
    elif kind in ("u4", "i4", "nf4"):
        packed = data.view(np.uint8).ravel()
        if index is not None and per_row % 2 == 0:
            packed = packed.reshape(rows, per_row // 2)[index].ravel()
            shape, index = (len(index), *shape[1:]), None
        values = np.empty(packed.size * 2, np.int8)
        values[0::2], values[1::2] = packed & 0x0F, packed >> 4
        if kind == "i4":
            values = np.where(values >= 8, values - 16, values).astype(np.int8)
        values = values[:int(np.prod(shape, dtype=np.int64))].reshape(shape)
        if kind == "nf4":
            values = NF4_LEVELS[values]
    else:
        values = data.reshape(shape)
    return values if index is None else values[index]


def _operand(node, index: np.ndarray, rows: int) -> np.ndarray:
    """The constant side of a Subtract/Multiply (maybe behind Converts), cut to the sampled rows."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        raise ValueError(f"unexpected {node.get_type_name()} in a decompression subgraph")
    shape = tuple(node.get_output_shape(0))
    values = _constant_values(node, index if shape and shape[0] == rows and len(shape) > 1 else None)
    return values.astype(np.float32)


def _decompress(weight, index: np.ndarray) -> tuple[np.ndarray, Any]:
    """Follow NNCF's decompression chain from an integer weight Constant; (rows [n, k], last node)."""
    rows = weight.get_output_shape(0)[0]
    value = _constant_values(weight, index).astype(np.float32)
    node = weight
    while True:
        consumers = [target.get_node() for target in node.output(0).get_target_inputs()]
        if len(consumers) != 1 or consumers[0].get_type_name() not in _DECOMPRESSION_OPS:
            break
        consumer = consumers[0]
        kind = consumer.get_type_name()
        if kind == "Subtract":
            value = value - _operand(consumer.input_value(1).get_node(), index, rows)
        elif kind == "Multiply":
            other = 1 if consumer.input_value(0).get_node() is node or \
                consumer.input_value(0).get_node().get_friendly_name() == node.get_friendly_name() else 0
            value = value * _operand(consumer.input_value(other).get_node(), index, rows)
        elif kind == "Reshape":
            value = value.reshape(len(index), -1)
        elif kind == "Gather":  # CB4 / codebook: the 4-bit values index a table of levels
            if consumer.input_value(1).get_node().get_friendly_name() != node.get_friendly_name():
                break  # not an index lookup into a constant table
            table = _operand(consumer.input_value(0).get_node(), index, rows)
            value = table[value.astype(np.int64)]
        elif consumer.get_output_element_type(0).get_type_name() == "f16":
            value = value.astype(np.float16).astype(np.float32)  # NNCF's f16 decompression rounds here
        node = consumer
    return value.reshape(len(index), -1), node


def _source_name(weight, checkpoint: Checkpoint) -> str | None:
    name = weight.get_friendly_name().split("/")[0].removeprefix("self.").removesuffix(_CODEBOOK_INDEX_SUFFIX)
    # optimum-intel names the weights of a bf16 checkpoint `<module>._openvino_orig_weight`
    for candidate in (name, name.replace("._openvino_orig_weight", ".weight")):
        if candidate in checkpoint.tensors:
            return candidate
    return None


def ir_matrices(model_xml: Path, checkpoint: Checkpoint, sample_rows: int | None = DEFAULT_SAMPLE_ROWS,
                ) -> Iterator[MatrixError]:
    """Errors of every integer-compressed weight of the IR whose name matches a checkpoint tensor."""
    import openvino as ov

    model = ov.Core().read_model(str(model_xml))
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_output_element_type(0).get_type_name()
        shape = list(op.get_output_shape(0))
        if kind not in _INT_TYPES or len(shape) not in (2, 3) or shape[-1] == 1:  # zero points end in 1
            continue
        name = _source_name(op, checkpoint)
        source_shape = checkpoint.shape(name) if name else None
        if source_shape is None or len(source_shape) != 2 or shape[0] != source_shape[0]:
            continue
        index = sample_index(shape[0], sample_rows)
        approx, _ = _decompress(op, index)
        exact = checkpoint.rows(name, index)
        if approx.shape != exact.shape:
            continue
        codebook = op.get_friendly_name().endswith(_CODEBOOK_INDEX_SUFFIX)
        yield _matrix_error(name, "cb4" if codebook else kind, approx, exact, shape[0])


def ir_weight_error(model_dir: Path, checkpoint_dir: Path, sample_rows: int | None = DEFAULT_SAMPLE_ROWS,
                    ) -> WeightError:
    """Weight error of a converted folder (or an .xml) against the checkpoint it came from.

    Raises ModelFormatError when no compressed matrix matches the checkpoint's tensor names (an
    fp16 model, or a checkpoint that is not the model's source).
    """
    xml = Path(model_dir)
    xml = xml / "openvino_model.xml" if xml.is_dir() else xml
    if not xml.is_file():
        raise ModelFormatError(f"{model_dir} holds no openvino_model.xml")
    result = WeightError(list(ir_matrices(xml, Checkpoint(checkpoint_dir), sample_rows)))
    if not result.matrices:
        raise ModelFormatError(f"no compressed weight of {model_dir} matches a tensor of {checkpoint_dir} "
                               "(an fp16 model, or not this model's source checkpoint)")
    return result


# --- GGUF -----------------------------------------------------------------------------------------

_GGUF_NAMES = {"token_embd": "model.embed_tokens", "output": "lm_head", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}


def gguf_source_name(name: str) -> str | None:
    """llama.cpp's GLM-4 tensor name -> the Hugging Face one (blk.3.attn_q.weight -> model.layers.3...)."""
    parts = name.split(".")
    if parts[-1] != "weight":
        return None
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.weight"
    if len(parts) == 2 and parts[0] in ("token_embd", "output"):
        return f"{_GGUF_NAMES[parts[0]]}.weight"
    return None


def gguf_weight_error(path: Path, checkpoint_dir: Path, sample_rows: int | None = DEFAULT_SAMPLE_ROWS,
                      ) -> WeightError:
    """Weight error of a GGUF file's quantized matrices (needs the `gguf` package) against a checkpoint."""
    try:
        from gguf import GGMLQuantizationType, GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        raise ModelFormatError("reading GGUF files needs the gguf package: pip install gguf") from None
    checkpoint = Checkpoint(checkpoint_dir)
    result = WeightError()
    for tensor in GGUFReader(str(path)).tensors:
        name = gguf_source_name(tensor.name)
        if name is None or name not in checkpoint.tensors or tensor.tensor_type in (
                GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            continue
        rows = int(tensor.shape[-1]) if len(tensor.shape) == 2 else 0  # GGUF lists dimensions innermost first
        data = np.asarray(tensor.data)
        if rows == 0 or data.shape[0] != rows:
            continue
        index = sample_index(rows, sample_rows)
        approx = dequantize(data[index], tensor.tensor_type).reshape(len(index), -1)
        exact = checkpoint.rows(name, index)
        if approx.shape != exact.shape:
            continue
        result.matrices.append(_matrix_error(name, tensor.tensor_type.name.lower(), approx, exact, rows))
    if not result.matrices:
        raise ModelFormatError(f"no quantized tensor of {path} matches a tensor of {checkpoint_dir}")
    return result
