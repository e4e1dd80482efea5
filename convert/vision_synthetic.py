"""Random GLM-4V-9B checkpoints in the real (THUDM/glm-4v-9b) layout: tiny ones for tests, full-size ones
(`build_sharded_vision_checkpoint`, written shard by shard) for the conversion and speed benchmarks.

The language part is a legacy `chatglm` checkpoint (`synthetic.write_legacy_chatglm`), as glm-4v-9b
ships it; the vision tower adds a `vision_config` to config.json and `transformer.vision.*` tensors
in a second shard, with the names of THUDM's `visual.py` (EVA2-CLIP-style ViT, 2x2 conv, GLU
projection, boi/eoi). The tokenizer is GLM-4's tiktoken layout, whose special tokens include
`<|begin_of_image|>` and `<|end_of_image|>`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from glm4_edge.glm_format import SPECIAL_TOKENS

from .synthetic import LEGACY_EXTRA_SPECIALS, TINY, WEIGHT_STD, Shape, build_checkpoint, build_tokenizer

BOI_TOKEN, EOI_TOKEN = "<|begin_of_image|>", "<|end_of_image|>"
VISION_PREFIX = "transformer.vision."


@dataclass(frozen=True)
class VisionShape:
    """The `vision_config` fields of glm-4v-9b's config.json (names as there)."""

    hidden_size: int
    num_heads: int
    num_hidden_layers: int
    intermediate_size: int
    patch_size: int
    image_size: int
    in_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    dropout_prob: float = 0.0
    scaling_factor: float = 8.0

    def config(self) -> dict:
        grid = self.image_size // self.patch_size
        return {**asdict(self), "num_positions": grid * grid + 1}


# 112 / 14 = 8x8 patches -> 4x4 = 16 image tokens (+ boi, eoi): small enough for a test module.
TINY_VISION = VisionShape(hidden_size=64, num_heads=4, num_hidden_layers=2, intermediate_size=128, patch_size=14,
                          image_size=112)
# glm-4v-9b's vision_config as published (1120 / 14 = 80x80 patches -> 40x40 = 1600 image tokens).
GLM4V_9B_VISION = VisionShape(hidden_size=1792, num_heads=16, num_hidden_layers=63, intermediate_size=15360,
                              patch_size=14, image_size=1120)


def vision_tensor_shapes(vision: VisionShape, hidden_size: int, ffn_hidden_size: int) -> dict[str, tuple]:
    """Name -> shape of every `transformer.vision.*` tensor of a checkpoint with these shapes."""
    h, grid = vision.hidden_size, vision.image_size // vision.patch_size
    prefix = "transformer.vision."
    shapes: dict[str, tuple] = {
        "patch_embedding.proj.weight": (h, vision.in_channels, vision.patch_size, vision.patch_size),
        "patch_embedding.proj.bias": (h,),
        "patch_embedding.cls_embedding": (1, h),
        "patch_embedding.position_embedding.weight": (grid * grid + 1, h),
    }
    for n in range(vision.num_hidden_layers):
        layer = f"transformer.layers.{n}."
        shapes.update({
            layer + "input_layernorm.weight": (h,), layer + "input_layernorm.bias": (h,),
            layer + "attention.query_key_value.weight": (3 * h, h), layer + "attention.query_key_value.bias": (3 * h,),
            layer + "attention.dense.weight": (h, h), layer + "attention.dense.bias": (h,),
            layer + "mlp.fc1.weight": (vision.intermediate_size, h),
            layer + "mlp.fc1.bias": (vision.intermediate_size,),
            layer + "mlp.fc2.weight": (h, vision.intermediate_size), layer + "mlp.fc2.bias": (h,),
            layer + "post_attention_layernorm.weight": (h,), layer + "post_attention_layernorm.bias": (h,),
        })
    shapes.update({
        "conv.weight": (hidden_size, h, 2, 2), "conv.bias": (hidden_size,),
        "linear_proj.linear_proj.weight": (hidden_size, hidden_size),
        "linear_proj.norm1.weight": (hidden_size,), "linear_proj.norm1.bias": (hidden_size,),
        "linear_proj.dense_h_to_4h.weight": (ffn_hidden_size, hidden_size),
        "linear_proj.gate_proj.weight": (ffn_hidden_size, hidden_size),
        "linear_proj.dense_4h_to_h.weight": (hidden_size, ffn_hidden_size),
        "boi": (1, 1, hidden_size), "eoi": (1, 1, hidden_size),
    })
    return {prefix + name: shape for name, shape in shapes.items()}


def build_vision_checkpoint(folder: Path, shape: Shape = TINY, vision: VisionShape = TINY_VISION,
                            seed: int = 0) -> Path:
    """Write a random-weight GLM-4V checkpoint (legacy chatglm + vision tower) to `folder`.

    Two shards: the language model (`model-00001-of-00002.safetensors`) and the vision tower
    (`model-00002-of-00002.safetensors`), with `model.safetensors.index.json`, as the hub's shards.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from .synthetic import write_legacy_chatglm

    folder = Path(folder)
    tokenizer = build_tokenizer()
    # The legacy tokenizer numbers GLM-4's specials, then the image/video ones, after the BPE ranks:
    # the embedding must have rows for all of them.
    ranks = len(tokenizer) - len(SPECIAL_TOKENS)
    needed = ranks + len(SPECIAL_TOKENS) + len(LEGACY_EXTRA_SPECIALS)
    if shape.vocab_size is None or shape.vocab_size < needed:
        shape = Shape(**{**asdict(shape), "vocab_size": (needed + 63) // 64 * 64})
    with tempfile.TemporaryDirectory() as temp:
        glm = build_checkpoint(Path(temp) / "glm", "glm", shape, seed=seed, tokenizer=tokenizer)
        write_legacy_chatglm(glm, folder)
    # Weights exactly representable in float16, so that an fp16 conversion stores them losslessly and a
    # test can compare the converted model with the float32 reference tightly.
    language = {name: tensor.half().float() for name, tensor in load_file(folder / "model.safetensors").items()}
    save_file(language, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    boi = ranks + len(SPECIAL_TOKENS) + LEGACY_EXTRA_SPECIALS.index(BOI_TOKEN)
    eoi = ranks + len(SPECIAL_TOKENS) + LEGACY_EXTRA_SPECIALS.index(EOI_TOKEN)
    config.update({"_name_or_path": "THUDM/glm-4v-9b", "boi_token_id": boi, "eoi_token_id": eoi,
                   "vision_config": vision.config()})
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    generator = torch.Generator().manual_seed(seed + 1)
    tensors = {}
    for name, size in vision_tensor_shapes(vision, config["hidden_size"], config["ffn_hidden_size"]).items():
        if "norm" in name and name.endswith(".weight"):
            tensor = 1.0 + 0.1 * torch.randn(size, generator=generator)
        elif len(size) >= 2 and not name.endswith(("boi", "eoi", "cls_embedding")):
            tensor = WEIGHT_STD * torch.randn(size, generator=generator)
        else:
            tensor = 0.5 * torch.randn(size, generator=generator)
        tensors[name] = tensor.half().float().contiguous()
    save_file(tensors, folder / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    from safetensors import safe_open

    weight_map = {}
    for file in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        with safe_open(str(folder / file), framework="pt") as handle:
            weight_map.update(dict.fromkeys(handle.keys(), file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def copy_without_vision(folder: Path, out: Path) -> Path:
    """The same checkpoint with `vision_config` removed: a text-only model with identical language weights."""
    folder, out = Path(folder), Path(out)
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config.pop("vision_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "model-00002-of-00002.safetensors").unlink()
    (out / "model.safetensors.index.json").unlink()
    return out


# --- full-size shapes for benchmarks ---------------------------------------------------------------

# glm-4v-9b's language part: GLM-4-9B's shape (GLM4V_FORMAT.md; THUDM/glm-4v-9b config.json).
GLM4V_9B_LANGUAGE = Shape(4096, 13696, 40, 32, 2, 128, 151552)
GLM4V_9B_SEQ_LENGTH = 8192
DEFAULT_SHARD_BYTES = 2_000_000_000  # the hub's 2 GB shards, and what one shard costs in RAM while written
SPARSE_UNIQUE_VALUES = 1024  # distinct bf16 values `_save_sparse_zeros` hands out (glm-4v-9b has 162 matrices)
BENCHMARK_WEIGHT_STD = 0.02  # the usual init scale: keeps 63 fp16 vision blocks far from overflow


def legacy_language_shapes(shape: Shape) -> dict[str, tuple]:
    """Name -> shape of every tensor of a legacy `chatglm` language model (glm-4-9b-chat, glm-4v-9b)."""
    h, ffn, vocab = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    if vocab is None:
        raise ValueError("legacy_language_shapes needs a Shape with its vocab_size")
    qkv = (shape.num_attention_heads + 2 * shape.num_key_value_heads) * shape.head_dim
    shapes: dict[str, tuple] = {"transformer.embedding.word_embeddings.weight": (vocab, h)}
    for n in range(shape.num_hidden_layers):
        layer = f"transformer.encoder.layers.{n}."
        shapes.update({
            layer + "input_layernorm.weight": (h,),
            layer + "self_attention.query_key_value.weight": (qkv, h),
            layer + "self_attention.query_key_value.bias": (qkv,),
            layer + "self_attention.dense.weight": (h, shape.num_attention_heads * shape.head_dim),
            layer + "post_attention_layernorm.weight": (h,),
            layer + "mlp.dense_h_to_4h.weight": (2 * ffn, h),
            layer + "mlp.dense_4h_to_h.weight": (h, ffn),
        })
    shapes.update({"transformer.encoder.final_layernorm.weight": (h,), "transformer.output_layer.weight": (vocab, h)})
    return shapes


def sized_config(config: dict, shape: Shape, vision: VisionShape, seq_length: int = GLM4V_9B_SEQ_LENGTH) -> dict:
    """A legacy GLM-4V config.json (as `build_vision_checkpoint` writes) resized to `shape` and `vision`."""
    return {**config, "hidden_size": shape.hidden_size, "ffn_hidden_size": shape.intermediate_size,
            "kv_channels": shape.head_dim, "num_attention_heads": shape.num_attention_heads,
            "multi_query_group_num": shape.num_key_value_heads, "num_layers": shape.num_hidden_layers,
            "num_hidden_layers": shape.num_hidden_layers, "padded_vocab_size": shape.vocab_size,
            "seq_length": seq_length, "torch_dtype": "bfloat16", "vision_config": vision.config()}


def _shards(tables: list[dict[str, tuple]], itemsize: int, limit: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most `limit` bytes (or one tensor); tables never share a shard."""
    shards: list[list[str]] = []
    for table in tables:
        current, size = [], 0
        for name, dims in table.items():
            nbytes = itemsize * math.prod(dims)
            if current and size + nbytes > limit:
                shards.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            shards.append(current)
    return shards


def build_sharded_vision_checkpoint(folder: Path, shape: Shape = GLM4V_9B_LANGUAGE,
                                    vision: VisionShape = GLM4V_9B_VISION, seed: int = 0,
                                    shard_bytes: int = DEFAULT_SHARD_BYTES, sparse_language: bool = False) -> Path:
    """Write a random bf16 GLM-4V checkpoint of any size, one shard in memory at a time.

    `sparse_language`: the language model's matrices are zeros left as holes in sparse shard files
    (norms and biases are written), so the full-size shape takes ~9 GB of disk instead of ~28 GB; only
    for what does not depend on the values (conversion memory, disk and time). The vision tower stays random.

    The full-size default is ~28 GB on disk (glm-4v-9b: 9.4B language + 4.4B vision parameters) and
    needs about `shard_bytes` of RAM. Language shards come first and vision shards last, never mixed,
    so `text_only_view` can link the language shards alone. Config, tokenizer and token ids are those
    of `build_vision_checkpoint` (the tiny test tokenizer, ids well inside the 151552 vocabulary);
    `shape.vocab_size` must be set. Written to `folder`.tmp and renamed, so a half-built checkpoint
    is never mistaken for a finished one. Raises FileExistsError if `folder` exists.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists")
    temp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:  # config and tokenizer files, from the tiny layout
        tiny = build_vision_checkpoint(Path(scratch) / "tiny", seed=seed)
        shutil.copytree(tiny, temp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    config = sized_config(json.loads((temp / "config.json").read_text()), shape, vision)
    (temp / "config.json").write_text(json.dumps(config, indent=2))
    language = legacy_language_shapes(shape)
    towers = vision_tensor_shapes(vision, shape.hidden_size, shape.intermediate_size)
    everything = {**language, **towers}
    groups = _shards([language, towers], 2, shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = unique = 0
    with torch.no_grad():
        for number, names in enumerate(groups, start=1):
            file = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            weight_map.update(dict.fromkeys(names, file))
            if sparse_language and names[0] in language:
                written, unique = _save_sparse_zeros(temp / file, {name: everything[name] for name in names}, unique)
                total += written
                continue
            shard = {name: _random_tensor(name, everything[name], generator) for name in names}
            save_file(shard, temp / file, metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in shard.values())
            del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (temp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    temp.rename(folder)
    return folder


def _save_sparse_zeros(path: Path, shapes: dict[str, tuple], first_index: int) -> tuple[int, int]:
    """A bf16 safetensors file whose matrices are holes (read back as zeros) but for one element, a value
    no other matrix has at a place no other matrix has it, and whose vectors are written: norm weights
    1.0, the rest 0.0. The distinct element matters: OpenVINO's IR writer stores identical constants
    once, so all-zero layers would shrink the IR to a fraction of the real one; its distinct place keeps
    the compressed INT4/INT8 codes of two layers from being identical too (equal codes, other scales).
    `first_index` numbers the first matrix's value. Written by hand because safetensors' writers take
    tensors in memory and write every byte. Format: safetensors' README (an 8-byte little-endian header
    length, a JSON header with dtype/shape/data_offsets, then the data). Returns (the tensors' bytes,
    the next index)."""
    import struct

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shapes.items():
        size = 2 * math.prod(dims)
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as safetensors writes it
    start = 8 + len(text)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for name, dims in shapes.items():
            handle.seek(start + header[name]["data_offsets"][0])
            if len(dims) == 1:
                one = b"\x80\x3f" if "norm" in name else b"\x00\x00"  # bf16 1.0 is 0x3f80, little-endian
                handle.write(one * dims[0])
            else:  # bf16 bit pattern 0x3c00 + k (0.0078 up to 1.99) at element k: a different k for each matrix
                if first_index >= min(SPARSE_UNIQUE_VALUES, dims[-1]):
                    raise ValueError(f"matrix {first_index} of {name}: no distinct value or place left")
                handle.seek(2 * first_index, 1)
                handle.write(struct.pack("<H", 0x3C00 + first_index))
                first_index += 1
        handle.truncate(start + offset)
    return offset, first_index


def _random_tensor(name: str, dims: tuple, generator):
    import torch

    tensor = torch.empty(dims, dtype=torch.bfloat16)  # filled in place: no float32 temporary
    if "norm" in name and name.endswith(".weight"):
        return tensor.fill_(1.0)
    learned_vector = name.endswith(("boi", "eoi", "cls_embedding"))
    return tensor.normal_(0.0, 0.5 if learned_vector else BENCHMARK_WEIGHT_STD, generator=generator)


def text_only_view(folder: Path, out: Path) -> Path:
    """The language part of a `build_sharded_vision_checkpoint` folder as a text-only legacy checkpoint.

    Shards are hard-linked (symlinked across file systems), not copied; config.json loses `vision_config`.
    Raises ValueError if a shard mixes language and vision tensors.
    """
    import os

    folder, out = Path(folder), Path(out)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    vision_files = {file for name, file in index["weight_map"].items() if name.startswith(VISION_PREFIX)}
    weight_map = {name: file for name, file in index["weight_map"].items() if not name.startswith(VISION_PREFIX)}
    if vision_files & set(weight_map.values()):
        raise ValueError(f"{folder}: a shard mixes language and vision tensors")
    temp = out.with_name(out.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    for item in folder.iterdir():
        if item.suffix == ".safetensors":
            if item.name in vision_files:
                continue
            try:
                os.link(item, temp / item.name)
            except OSError:
                (temp / item.name).symlink_to(item.resolve())
        elif item.is_file() and item.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(item, temp / item.name)
    config = json.loads((folder / "config.json").read_text())
    for key in ("vision_config", "boi_token_id", "eoi_token_id"):
        config.pop(key, None)
    config["_name_or_path"] = "THUDM/glm-4-9b-chat"
    (temp / "config.json").write_text(json.dumps(config, indent=2))
    (temp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    temp.rename(out)
    return out
