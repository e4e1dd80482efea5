"""How many tokens a checkpoint's RoPE supports, read from its config.json.

Shared by `convert` (which writes YaRN and the manifest's context length) and the runtime (which
needs the window of a model folder converted by another tool, without a manifest). Pure functions
over the config dict; the rules follow transformers 5 (`RotaryEmbeddingConfigMixin`).
"""

from __future__ import annotations

from typing import Any

SCALED_ROPE_TYPES = ("yarn", "linear", "dynamic", "longrope", "llama3")


def rope_entry(config: dict[str, Any]) -> dict[str, Any]:
    """The RoPE settings transformers 5 uses: `rope_scaling` when set, else `rope_parameters`
    (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`)."""
    for key in ("rope_scaling", "rope_parameters"):
        entry = config.get(key)
        if isinstance(entry, dict) and entry:
            return entry
    return {}


def rope_type(entry: dict[str, Any]) -> str:
    """`rope_type`, or the older `type` key; "default" when unscaled."""
    return str(entry.get("rope_type") or entry.get("type") or "default")


def context_window(config: dict[str, Any]) -> int:
    """Tokens the config's RoPE supports: factor x original window for scaled RoPE (as transformers reads
    it: `original_max_position_embeddings` defaults to `max_position_embeddings`, a missing factor is their
    ratio), else `max_position_embeddings` (`seq_length` in a legacy chatglm config)."""
    native = int(config.get("max_position_embeddings") or config.get("seq_length") or 0)
    entry = rope_entry(config)
    if rope_type(entry) not in SCALED_ROPE_TYPES:
        return native
    original = int(entry.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
                   or native)
    factor = float(entry.get("factor") or (native / original if original else 1.0))
    return int(round(factor * original))
