"""PEFT LoRA adapters merged into checkpoint tensors, with the same result as PEFT's `merge_and_unload`.

The merge is done tensor by tensor, as the weights stream from one shard to the next, so it also
applies to the legacy `chatglm` layout, which has no transformers class without remote code. Each
formula follows PEFT 0.21 (`peft/tuners/lora/layer.py` and `variants.py`):

- scale = alpha / r, or alpha / sqrt(r) with `use_rslora`; r and alpha per module from
  `rank_pattern` / `alpha_pattern` (regex `(.*\\.)?(KEY)$` on the module name, first match wins);
- Linear: W += scale * B @ A; an Embedding: W += scale * (B @ A).T;
- DoRA (`use_dora`): W' = m / ||W + dW|| * (W + dW), the norm per output row of a Linear, per hidden
  column of an Embedding;
- `lora_bias`: bias += scale * lora_B.bias;
- `modules_to_save`, biases saved by `bias="all"|"lora_only"` and embeddings saved whole
  (`base_layer.weight`): the adapter's tensor replaces the checkpoint's before any LoRA is added.

Options whose merge would differ from this are refused by name (`UNSUPPORTED_OPTIONS`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm4_edge.errors import Glm4EdgeError

ADAPTER_PREFIX = "base_model.model."
# adapter_config.json keys that change what merging means; any truthy value is refused, naming the key.
UNSUPPORTED_OPTIONS = {
    "layer_replication": "it duplicates layers, which changes the model's shape",
    "trainable_token_indices": "trainable token rows are not merged by glm4-edge",
    "target_parameters": "LoRA on raw parameters (ParamWrapper) is not merged by glm4-edge",
    "alora_invocation_tokens": "activated LoRA (aLoRA) cannot be merged into the weights",
    "use_qalora": "QA-LoRA is not merged by glm4-edge",
    "arrow_config": "Arrow routing cannot be merged into the weights",
    "use_bdlora": "BD-LoRA is not merged by glm4-edge",
    "kasa_config": "KaSA is not merged by glm4-edge",
    "velora_config": "VeLoRA is not merged by glm4-edge",
    "monteclora_config": "MonteCLoRA is not merged by glm4-edge",
    "megatron_config": "Megatron parallel LoRA layers are not merged by glm4-edge",
}


@dataclass
class LoraModule:
    """One adapted module: A (r, in) and B (out, r) for a Linear; A (r, vocab), B (hidden, r) for an Embedding."""

    a: Any
    b: Any
    scale: float
    embedding: bool = False
    magnitude: Any = None  # DoRA magnitude vector
    bias: Any = None  # lora_B.bias with lora_bias


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter ready to merge: per-module low-rank pairs and whole tensors that replace the base's."""

    folder: Path
    modules: dict[str, LoraModule]  # module name (no `.weight`) -> its LoRA
    replacements: dict[str, Any]  # full tensor name -> tensor (modules_to_save, saved biases/embeddings)
    merged: set[str] = field(default_factory=set)

    def apply(self, name: str, tensor):
        """`tensor` (the checkpoint's `name`) with this adapter merged; the same tensor if not adapted."""
        replacement = self.replacements.get(name)
        if replacement is not None:
            if tuple(replacement.shape) != tuple(tensor.shape):
                raise Glm4EdgeError(f"{self.folder}: the adapter's {name} has shape {tuple(replacement.shape)}, the "
                                    f"checkpoint's {tuple(tensor.shape)} (a resized vocabulary?); merge it with "
                                    "PEFT first")
            tensor = replacement.to(tensor.dtype)
            self.merged.add(name)
        module_name, _, kind = name.rpartition(".")
        module = self.modules.get(module_name)
        if module is None or kind not in ("weight", "bias"):
            return tensor
        if kind == "bias":
            if module.bias is None:
                return tensor
            self.merged.add(name)
            return (tensor.float() + module.scale * module.bias.float()).to(tensor.dtype)
        self.merged.add(name)
        return _merge_weight(name, tensor, module, self.folder)

    def check_used(self) -> None:
        """Refuse an adapter whose weights name tensors this checkpoint does not have."""
        wanted = {f"{name}.weight" for name in self.modules} | set(self.replacements)
        wanted |= {f"{name}.bias" for name, module in self.modules.items() if module.bias is not None}
        missing = sorted(wanted - self.merged)
        if missing and not self.merged:
            raise Glm4EdgeError(f"{self.folder} targets none of this checkpoint's weights (e.g. {missing[0]}); "
                                "was it trained on another model?")
        if missing:
            raise Glm4EdgeError(f"{self.folder} adapts {missing[0]}, which this checkpoint does not have; was it "
                                "trained on another model?")


def _merge_weight(name: str, weight, module: LoraModule, folder: Path):
    a, b = module.a.float(), module.b.float()
    try:
        delta = module.scale * (b @ a)
        if module.embedding:
            delta = delta.T
        merged = weight.float() + delta
    except RuntimeError:
        raise Glm4EdgeError(f"{folder}: the LoRA for {name} has shapes A {tuple(module.a.shape)}, B "
                            f"{tuple(module.b.shape)}, which do not fit the checkpoint's {tuple(weight.shape)}; was it "
                            "trained on another model?") from None
    if module.magnitude is not None:
        magnitude = module.magnitude.float()
        if module.embedding:
            merged = merged * (magnitude / merged.norm(p=2, dim=0)).view(1, -1)
        else:
            merged = merged * (magnitude / merged.norm(p=2, dim=1)).view(-1, 1)
    return merged.to(weight.dtype)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern matching the end of `module`'s dotted name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load(adapter: Path) -> LoraAdapter:
    """The PEFT LoRA adapter in `adapter`; Glm4EdgeError naming what cannot be merged."""
    config = _read_config(adapter)
    state = _read_weights(adapter)
    rank, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    dora = bool(config.get("use_dora"))
    modules: dict[str, LoraModule] = {}
    replacements: dict[str, Any] = {}
    for key, tensor in state.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        if ".lora_A." in name or name.endswith(".lora_embedding_A"):
            embedding = name.endswith(".lora_embedding_A")
            module = name.split(".lora_embedding_A" if embedding else ".lora_A.")[0]
            b = state.get(key.replace(".lora_embedding_A", ".lora_embedding_B") if embedding
                          else key.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise Glm4EdgeError(f"{adapter}: {key} has no matching lora_B; the adapter is incomplete")
            r = int(pattern_value(rank_pattern, module, rank))
            if tensor.shape[0] != r:
                raise Glm4EdgeError(f"{adapter}: {module} has rank {tensor.shape[0]} but adapter_config.json says "
                                    f"r={r}; the adapter files do not belong together")
            a_scale = float(pattern_value(alpha_pattern, module, alpha))
            scale = a_scale / (r ** 0.5 if rslora else r)
            magnitude = None
            if dora:
                magnitude = state.get(f"{ADAPTER_PREFIX}{module}.lora_magnitude_vector",
                                      state.get(f"{ADAPTER_PREFIX}{module}.lora_magnitude_vector.weight"))
                if magnitude is None:
                    raise Glm4EdgeError(f"{adapter}: use_dora is set but {module} has no lora_magnitude_vector")
            bias = state.get(f"{ADAPTER_PREFIX}{module}.lora_B.bias") if config.get("lora_bias") else None
            modules[module] = LoraModule(tensor, b, scale, embedding, magnitude, bias)
        elif re.search(r"\.lora_(B|embedding_B|magnitude_vector)\b", name):
            continue  # read with its lora_A above
        elif "lora_" in name or not name.endswith((".weight", ".bias")):
            raise Glm4EdgeError(f"{adapter}: {key} is not a LoRA tensor glm4-edge can merge; merge the adapter "
                                "with PEFT first")
        else:
            # modules_to_save, biases (bias="all"/"lora_only") and whole embeddings: PEFT loads them over the base
            replacements[name.replace(".base_layer.", ".")] = tensor
    if not modules and not replacements:
        raise Glm4EdgeError(f"{adapter} holds no LoRA weights")
    return LoraAdapter(adapter, modules, replacements)


def _read_config(adapter: Path) -> dict[str, Any]:
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise Glm4EdgeError(f"{adapter} has no adapter_config.json; --adapter takes a PEFT LoRA adapter folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Glm4EdgeError(f"{path} is not valid JSON ({error}); save the adapter again with PEFT") from None
    if not isinstance(config, dict):
        raise Glm4EdgeError(f"{path} does not hold a JSON object; save the adapter again with PEFT")
    if config.get("peft_type", "LORA") != "LORA":
        raise Glm4EdgeError(f"{adapter} is a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
    for option, why in UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise Glm4EdgeError(f"{adapter} sets {option} ({why}); merge it with PEFT's merge_and_unload first "
                                "and convert the merged checkpoint")
    return config


def _read_weights(adapter: Path) -> dict[str, Any]:
    import torch

    files = sorted(adapter.glob("adapter_model.safetensors")) or sorted(adapter.glob("adapter_model.bin"))
    if not files:
        raise Glm4EdgeError(f"{adapter} has no adapter_model.safetensors")
    try:
        if files[0].suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(files[0])
        return torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not how the reader failed inside
        raise Glm4EdgeError(f"{files[0]} cannot be read ({type(error).__name__}); save the adapter again "
                            "with PEFT") from None
