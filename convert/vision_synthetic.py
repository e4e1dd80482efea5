"""Tiny random GLM-4V-9B checkpoints in the real (THUDM/glm-4v-9b) layout, for tests.

The language part is a legacy `chatglm` checkpoint (`synthetic.write_legacy_chatglm`), as glm-4v-9b
ships it; the vision tower adds a `vision_config` to config.json and `transformer.vision.*` tensors
in a second shard, with the names of THUDM's `visual.py` (EVA2-CLIP-style ViT, 2x2 conv, GLU
projection, boi/eoi). The tokenizer is GLM-4's tiktoken layout, whose special tokens include
`<|begin_of_image|>` and `<|end_of_image|>`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from glm4_edge.glm_format import SPECIAL_TOKENS

from .synthetic import LEGACY_EXTRA_SPECIALS, TINY, WEIGHT_STD, Shape, build_checkpoint, build_tokenizer

BOI_TOKEN, EOI_TOKEN = "<|begin_of_image|>", "<|end_of_image|>"


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
