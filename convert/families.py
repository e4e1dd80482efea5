"""Which GLM-4 family a checkpoint is, and the source-side rewrites done before export.

Rewrites (legacy `chatglm` remap, LoRA merge, YaRN config) produce a staged Hugging Face folder in
the `glm`/`glm4` layout, streamed one tensor at a time so a 9B model never sits in memory twice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm4_edge.errors import Glm4EdgeError, ModelFormatError
from glm4_edge.glm_format import SPECIAL_TOKENS
from glm4_edge.rope import SCALED_ROPE_TYPES, context_window, rope_entry, rope_type  # noqa: F401 - re-exported

from .lora import LoraAdapter
from .synthetic import GLM4_SPLIT_PATTERN, LEGACY_EXTRA_SPECIALS

FAMILIES = {"glm4": "GLM-4-0414 / Z1", "glm": "GLM-4-9B -hf / glm-edge", "chatglm": "legacy glm-4-9b-chat"}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@dataclass
class SourceInfo:
    folder: Path
    family: str
    config: dict[str, Any]
    reasoning: bool
    vision: bool = False  # GLM-4V-9B: a legacy chatglm language model plus a vision tower

    @property
    def context_length(self) -> int:
        """Tokens the checkpoint's RoPE supports as shipped (see `context_window`)."""
        return context_window(self.config)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no config.json; point at a Hugging Face checkpoint folder or hub id")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{path} is not valid JSON ({error}); re-download the checkpoint") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path} does not hold a JSON object; re-download the checkpoint")
    return config


def detect_family(folder: Path, name_hint: str = "") -> SourceInfo:
    """Family from `config.json`; GLM-4V, ChatGLM2/3 and non-GLM models are refused."""
    config = read_config(folder)
    model_type = str(config.get("model_type", ""))
    if model_type in ("glm4v", "glm4v_moe", "glm4v_text") or ("vision_config" in config and model_type != "chatglm"):
        raise ModelFormatError(f"{folder} is a GLM-4.1V/4.5V model (model_type {model_type!r}); glm4-edge converts "
                               "GLM-4 text models and GLM-4V-9B (THUDM/glm-4v-9b, model_type chatglm)")
    if model_type == "glm4" or model_type == "glm":
        family = model_type
    elif model_type == "chatglm":
        if not (folder / "tokenizer.model").is_file() or not _is_tiktoken_file(folder / "tokenizer.model"):
            raise ModelFormatError(f"{folder} is a ChatGLM checkpoint without GLM-4's tiktoken tokenizer.model "
                                   "(ChatGLM2/3 are not GLM-4); use a glm-4-9b-chat checkpoint")
        family = "chatglm"
    elif model_type == "glm4_moe":
        raise ModelFormatError(f"{folder} is a GLM-4.5 MoE model (model_type glm4_moe); glm4-edge converts "
                               "dense GLM-4 models: glm4 (0414/Z1), glm (-hf) and legacy chatglm")
    else:
        raise ModelFormatError(f"{folder} is not a GLM-4 checkpoint (model_type {model_type or 'missing'!r}); "
                               "glm4-edge converts glm4 (GLM-4-0414/Z1), glm (glm-4-9b-chat-hf) and chatglm")
    _check_weights(folder)
    _check_tokenizer(folder, family)
    reasoning = "z1" in (name_hint or config.get("_name_or_path", "") or folder.name).lower()
    return SourceInfo(folder, family, config, reasoning, vision="vision_config" in config)


def _is_tiktoken_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            first = handle.readline().split()
        return len(first) == 2 and first[1].isdigit()
    except OSError:
        return False


def _check_weights(folder: Path) -> None:
    if not any(folder.glob(pattern) for pattern in WEIGHT_PATTERNS):
        raise ModelFormatError(f"{folder} has no weights (*.safetensors or *.bin); the download is incomplete")


def _check_tokenizer(folder: Path, family: str) -> None:
    if family == "chatglm":
        return  # tokenizer.model was checked above
    if not (folder / "tokenizer.json").is_file():
        raise ModelFormatError(f"{folder} has no tokenizer.json; download the tokenizer files with the weights")


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(p for p in folder.glob("*.bin") if p.name != "training_args.bin")


def iter_tensors(folder: Path, skip_prefix: str | None = None):
    """(name, tensor) over every shard, one shard in memory at a time; safetensors names starting with
    `skip_prefix` are not even read (GLM-4V's 9.0 GB vision tower, when remapping its language model)."""
    import torch
    from safetensors import safe_open

    for file in weight_files(folder):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    if skip_prefix is None or not name.startswith(skip_prefix):
                        yield name, handle.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state


def check_shards(folder: Path) -> None:
    """Refuse a truncated or corrupted safetensors shard (its header and sizes) before hours of export."""
    from safetensors import safe_open

    for file in weight_files(folder):
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error types for each way a file is broken
            detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise ModelFormatError(f"{file} is not a readable safetensors file ({detail}); the download is "
                                   "incomplete or corrupted: download it again") from None


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in weight_files(folder))


# --- legacy chatglm -> glm ---------------------------------------------------------------------

LEGACY_RENAMES = (
    ("transformer.output_layer.", "lm_head."),
    ("transformer.embedding.word_embeddings.", "model.embed_tokens."),
    ("transformer.encoder.final_layernorm.", "model.norm."),
    ("transformer.encoder.layers.", "model.layers."),
    (".self_attention.dense.", ".self_attn.o_proj."),
    (".mlp.dense_h_to_4h.", ".mlp.gate_up_proj."),
    (".mlp.dense_4h_to_h.", ".mlp.down_proj."),
)


def legacy_glm_config(config: dict[str, Any]) -> dict[str, Any]:
    """The `glm` config that the legacy `chatglm` config describes (as glm-4-9b-chat-hf was made)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("kv_channels", config["hidden_size"] // heads)
    eos = config.get("eos_token_id", [151329, 151336, 151338])
    return {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": config["padded_vocab_size"],
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["ffn_hidden_size"],
        "num_hidden_layers": config.get("num_layers", config.get("num_hidden_layers")),
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("multi_query_group_num", heads)
        if config.get("multi_query_attention", True) else heads,
        "head_dim": head_dim,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": config.get("layernorm_epsilon", 1.5625e-07),
        "rope_theta": 10000.0 * float(config.get("rope_ratio", 1.0)),
        "max_position_embeddings": config.get("seq_length", 131072),
        "attention_bias": bool(config.get("add_qkv_bias", True)),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "eos_token_id": eos,
        "pad_token_id": config.get("pad_token_id", eos[0] if isinstance(eos, list) else eos),
        "torch_dtype": config.get("torch_dtype", "bfloat16"),
    }


def remap_legacy(source: SourceInfo, staged: Path, lora: LoraAdapter | None = None) -> None:
    """Write the legacy checkpoint as a `glm` checkpoint: split fused QKV, rename tensors."""
    from safetensors.torch import save_file

    config = legacy_glm_config(source.config)
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    shard: dict[str, Any] = {}
    index: dict[str, str] = {}
    shard_bytes, shard_number = 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_number
        if shard:
            file = f"model-{shard_number:05d}.safetensors"
            save_file(shard, staged / file, metadata={"format": "pt"})
            index.update(dict.fromkeys(shard, file))
            shard, shard_bytes, shard_number = {}, 0, shard_number + 1

    for name, tensor in iter_tensors(source.folder, skip_prefix="transformer.vision."):
        if "rotary_pos_emb" in name or name.startswith("transformer.vision."):
            continue  # the vision tower is converted on its own (vision_export)
        if lora is not None:
            tensor = lora.apply(name, tensor)
        new = name
        for old, replacement in LEGACY_RENAMES:
            new = new.replace(old, replacement)
        if ".self_attention.query_key_value." in new:
            prefix, kind = new.split(".self_attention.query_key_value.")
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split(sizes, dim=0), strict=True):
                shard[f"{prefix}.self_attn.{part}.{kind}"] = piece.contiguous()
        else:
            shard[new] = tensor.contiguous()
        shard_bytes += tensor.numel() * tensor.element_size()
        if shard_bytes > 2 << 30:
            flush()
    flush()
    (staged / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (staged / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]}
    (staged / "generation_config.json").write_text(json.dumps(generation, indent=2))
    legacy_tokenizer(source.folder).save_pretrained(staged)


def legacy_tokenizer(folder: Path):
    """A fast tokenizer from GLM-4's tiktoken `tokenizer.model`, without the repo's remote code."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = sum(1 for line in (folder / "tokenizer.model").read_text().splitlines() if line.strip())
    specials = list(SPECIAL_TOKENS) + list(LEGACY_EXTRA_SPECIALS)
    converter = TikTokenConverter(vocab_file=str(folder / "tokenizer.model"), pattern=GLM4_SPLIT_PATTERN,
                                  extra_special_tokens=specials)
    try:
        tokenizer = converter.converted()
    except (ValueError, KeyError) as error:
        raise ModelFormatError(f"{folder}/tokenizer.model is not a readable tiktoken file ({error})") from None
    if tokenizer.token_to_id(specials[0]) != ranks:
        raise ModelFormatError(f"{folder}/tokenizer.model does not have GLM-4's layout "
                               "(special tokens must follow the BPE ranks)")
    tokenizer_config = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=specials[1:],
                                   clean_up_tokenization_spaces=False)
    fast.padding_side = "left"
    template = tokenizer_config.get("chat_template")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    fast.chat_template = template or _default_template()
    return fast


def _default_template() -> str:
    from .synthetic import chat_template

    return chat_template(False)


# --- LoRA adapters -------------------------------------------------------------------------------

def merge_lora_into(source: SourceInfo, staged: Path, lora: LoraAdapter) -> None:
    """Copy a glm/glm4 checkpoint into `staged` with the adapter merged, shard by shard."""
    from safetensors.torch import save_file

    index: dict[str, str] = {}
    for number, file in enumerate(weight_files(source.folder)):
        shard = {}
        for name, tensor in _tensors_of(file):
            shard[name] = lora.apply(name, tensor).contiguous()
        out = f"model-{number:05d}.safetensors"
        save_file(shard, staged / out, metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, out))
        del shard
    (staged / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    link_side_files(source.folder, staged, skip_weights=True)


def _tensors_of(file: Path):
    import torch
    from safetensors import safe_open

    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    else:
        yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()


def link_side_files(source: Path, staged: Path, skip_weights: bool) -> None:
    """Put the source's non-weight files (and weights unless skipped) into `staged` without copying data."""
    for item in source.iterdir():
        if item.name.startswith("."):
            continue
        is_weight = item.suffix in (".safetensors", ".bin") or item.name.endswith(".index.json")
        if is_weight and skip_weights:
            continue
        target = staged / item.name
        if target.exists():
            continue
        if item.is_dir():
            continue
        if is_weight:
            try:
                os.link(item, target)
            except OSError:
                target.symlink_to(item.resolve())
        else:
            shutil.copy2(item, target)


# --- long context ---------------------------------------------------------------------------------

# RoPE types whose `factor` stretches the pretrained window (transformers' ROPE_INIT_FUNCTIONS).
def apply_context(config: dict[str, Any], family: str, context: int) -> dict[str, Any]:
    """The config whose RoPE supports `context` tokens.

    Within the checkpoint's own window (`context_window`) the config is returned unchanged, so the
    model computes exactly what it did. Beyond it, a GLM-4-0414 config gets YaRN over its pretrained
    window (factor = context / original, as THUDM's model cards describe); other families and other
    scaling types are refused (Glm4EdgeError)."""
    window = context_window(config)
    if context <= window:
        return config
    entry = rope_entry(config)
    kind = rope_type(entry)
    if family != "glm4":
        raise Glm4EdgeError(f"--context {context} is beyond this {family} model's {window} tokens and YaRN is "
                            f"defined for GLM-4-0414 models only; use --context <= {window}")
    if kind not in ("default", "yarn"):
        raise Glm4EdgeError(f"--context {context} is beyond the {window} tokens of this checkpoint's {kind} RoPE "
                            f"scaling, and glm4-edge extends only unscaled or YaRN RoPE; use --context <= {window}")
    original = window if kind == "default" else int(
        entry.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        or config.get("max_position_embeddings") or window)
    scaling = {key: value for key, value in entry.items() if key != "type"}
    scaling.update(
        type="yarn", rope_type="yarn", factor=context / original, original_max_position_embeddings=original,
        rope_theta=entry.get("rope_theta", config.get("rope_theta", 10000.0)),
        partial_rotary_factor=entry.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5)))
    # Both keys: transformers 5 reads `rope_scaling` first, older readers only know it, newer ones write
    # `rope_parameters`; they must agree.
    return {**config, "rope_scaling": scaling, "rope_parameters": dict(scaling), "max_position_embeddings": context}
