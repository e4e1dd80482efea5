"""Our PyTorch GLM-4V-9B vision tower and a reference forward of the whole model (no remote code).

The module tree mirrors THUDM/glm-4v-9b's `visual.py` (EVA2CLIPModel), so its state-dict names are
the checkpoint's `transformer.vision.*` names with the prefix dropped: an EVA2-CLIP-style ViT with
post-norm blocks (`x + LN(attn(x))`, `x + LN(mlp(x))`), CLS dropped, a 2x2 stride-2 conv to the
language width, a GLU projection, boi/eoi vectors around the patches, all divided by
`vision_config.scaling_factor`. The full-model reference splices those features over the
`<|begin_of_image|><|endoftext|><|end_of_image|>` placeholder and assigns position ids as the
reference `modeling_chatglm.py` does (`reference_position_ids`). Needs torch (the [convert] extra).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glm4_edge.errors import ModelFormatError

VISION_PREFIX = "transformer.vision."
GLU_LAYER_NORM_EPS = 1e-5  # visual.py's GLU uses nn.LayerNorm's default eps


@dataclass(frozen=True)
class VisionConfig:
    """`vision_config` plus the language widths the projection maps to (config.json's names)."""

    hidden_size: int
    num_heads: int
    num_hidden_layers: int
    intermediate_size: int
    patch_size: int
    image_size: int
    in_channels: int
    layer_norm_eps: float
    scaling_factor: float
    hidden_act: str
    text_hidden_size: int
    text_ffn_hidden_size: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> VisionConfig:
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise ModelFormatError("config.json has no vision_config object; this is not a GLM-4V checkpoint")
        try:
            return cls(hidden_size=int(vision["hidden_size"]), num_heads=int(vision["num_heads"]),
                       num_hidden_layers=int(vision["num_hidden_layers"]),
                       intermediate_size=int(vision["intermediate_size"]), patch_size=int(vision["patch_size"]),
                       image_size=int(vision["image_size"]), in_channels=int(vision.get("in_channels", 3)),
                       layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
                       scaling_factor=float(vision.get("scaling_factor", 8.0)),
                       hidden_act=str(vision.get("hidden_act", "gelu")),
                       text_hidden_size=int(config["hidden_size"]),
                       text_ffn_hidden_size=int(config["ffn_hidden_size"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFormatError(f"config.json's vision_config is incomplete ({error}); re-download the "
                                   "checkpoint") from None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def image_tokens(self) -> int:
        """Patch tokens after the 2x2 conv (1600 for glm-4v-9b)."""
        return (self.grid // 2) ** 2

    @property
    def feature_tokens(self) -> int:
        """What the tower outputs per image: boi, the image tokens, eoi (1602 for glm-4v-9b)."""
        return self.image_tokens + 2


def _activation(name: str) -> nn.Module:
    # transformers' ACT2FN: "gelu" is the exact (erf) GELU, "gelu_new"/"gelu_pytorch_tanh" the tanh one.
    return nn.GELU(approximate="tanh" if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast") else "none")


class PatchEmbedding(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_embedding = nn.Parameter(torch.zeros(1, c.hidden_size))
        self.position_embedding = nn.Embedding(c.grid * c.grid + 1, c.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_embedding.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.position_embedding.weight.unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.query_key_value = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = self.query_key_value(x).reshape(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # not causal, scale 1/sqrt(head_dim)
        return self.dense(out.transpose(1, 2).reshape(b, length, -1))


class MLP(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _activation(c.hidden_act)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Post-norm: the LayerNorms apply to the branch outputs, not the inputs."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention = Attention(c)
        self.mlp = MLP(c)
        self.post_attention_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.input_layernorm(self.attention(x))
        return x + self.post_attention_layernorm(self.mlp(x))


class Transformer(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class GLU(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        h, ffn = c.text_hidden_size, c.text_ffn_hidden_size
        self.linear_proj = nn.Linear(h, h, bias=False)
        self.norm1 = nn.LayerNorm(h, eps=GLU_LAYER_NORM_EPS)
        self.act1 = nn.GELU()
        self.dense_h_to_4h = nn.Linear(h, ffn, bias=False)
        self.gate_proj = nn.Linear(h, ffn, bias=False)
        self.dense_4h_to_h = nn.Linear(ffn, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(nn.functional.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class VisionTower(nn.Module):
    """images [B, 3, image_size, image_size] float32 (normalised) -> features [B, feature_tokens, text hidden]."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.config = c
        self.patch_embedding = PatchEmbedding(c)
        self.transformer = Transformer(c)
        self.linear_proj = GLU(c)
        self.conv = nn.Conv2d(c.hidden_size, c.text_hidden_size, kernel_size=2, stride=2)
        self.boi = nn.Parameter(torch.zeros(1, 1, c.text_hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, c.text_hidden_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.patch_embedding(images))[:, 1:]
        b, s, h = x.shape
        grid = int(s ** 0.5)
        x = self.conv(x.view(b, grid, grid, h).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        x = self.linear_proj(x)
        x = torch.cat((self.boi.expand(b, -1, -1), x, self.eoi.expand(b, -1, -1)), dim=1)
        return x / self.config.scaling_factor


def load_vision_tower(folder: Path, dtype: torch.dtype = torch.float32) -> VisionTower:
    """The checkpoint's vision tower, read shard by shard: only `transformer.vision.*` tensors are loaded.

    Built on the meta device and filled by assignment, so peak memory is the tower's weights once
    (about 9.0 GB in fp16 for glm-4v-9b's 4.51B vision parameters, twice that in float32).
    Raises ModelFormatError if a tensor is missing or has the wrong shape.
    """
    from safetensors import safe_open

    from .families import read_config, weight_files

    config = VisionConfig.of(read_config(folder))
    with torch.device("meta"):
        tower = VisionTower(config)
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        if file.suffix != ".safetensors":
            raise ModelFormatError(f"{file}: GLM-4V conversion reads safetensors shards only; re-download the "
                                   "checkpoint's *.safetensors files")
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(VISION_PREFIX):
                    state[name[len(VISION_PREFIX):]] = handle.get_tensor(name).to(dtype)
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelFormatError(f"{folder} lacks vision tensor {VISION_PREFIX}{missing[0]} (and {len(missing) - 1} "
                               "more); the download is incomplete")
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise ModelFormatError(f"{VISION_PREFIX}{name} has shape {tuple(tensor.shape)}, vision_config says "
                                   f"{tuple(expected[name].shape)}; the checkpoint and its config.json disagree")
    tower.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True, assign=True)
    return tower.eval()


def reference_position_ids(input_ids: list[int], boi_token_id: int, eoi_token_id: int,
                           image_tokens: int) -> torch.Tensor:
    """Position ids of the spliced sequence, as THUDM's modeling_chatglm.py (glm-4v-9b) builds them.

    Sequential ids for the unexpanded prompt; then positions[:boi + 1], position[boi + 1] repeated
    once per image token, positions[eoi:]. Shape [1, len(input_ids) - 3 + image_tokens + 2].
    """
    position_ids = torch.arange(len(input_ids)).unsqueeze(0)
    boi, eoi = input_ids.index(boi_token_id), input_ids.index(eoi_token_id)
    if eoi - boi != 2:
        raise ValueError("the image placeholder must be boi, one token, eoi")
    return torch.cat((position_ids[:, :boi + 1], position_ids[:, boi + 1].repeat(1, image_tokens),
                      position_ids[:, eoi:]), dim=1)


class ReferenceModel:
    """The whole GLM-4V model in PyTorch: our vision tower + the language model via the legacy remap.

    `staged` is the checkpoint's language part remapped to the `glm` layout (`families.remap_legacy`),
    run by transformers' GlmForCausalLM with `inputs_embeds` and explicit position ids.
    """

    def __init__(self, folder: Path, staged: Path):
        from transformers import AutoModelForCausalLM

        self.config = json.loads((Path(folder) / "config.json").read_text())
        self.vision_config = VisionConfig.of(self.config)
        self.tower = load_vision_tower(Path(folder))
        self.language = AutoModelForCausalLM.from_pretrained(staged, dtype=torch.float32).eval()

    @torch.no_grad()
    def image_features(self, pixel_values) -> torch.Tensor:
        return self.tower(torch.as_tensor(pixel_values, dtype=torch.float32))

    @torch.no_grad()
    def logits(self, input_ids: list[int], pixel_values=None) -> torch.Tensor:
        """Logits [sequence, vocab] for `input_ids` (with the image placeholder when pixels are given)."""
        embed = self.language.get_input_embeddings()
        ids = torch.tensor([input_ids])
        if pixel_values is None:
            return self.language(input_ids=ids).logits[0]
        embeds = embed(ids)
        boi = input_ids.index(self.config["boi_token_id"])
        eoi = input_ids.index(self.config["eoi_token_id"])
        spliced = torch.cat((embeds[:, :boi], self.image_features(pixel_values), embeds[:, eoi + 1:]), dim=1)
        positions = reference_position_ids(input_ids, self.config["boi_token_id"], self.config["eoi_token_id"],
                                           self.vision_config.image_tokens)
        return self.language(inputs_embeds=spliced, position_ids=positions).logits[0]
