"""From rendered prompt to token ids: message text kept as text, the template format, draft tokenizers.

`glm_format` decides what the prompt says; this module turns it into the ids the pipeline gets,
with openvino_genai's tokenizer (no transformers at run time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from . import glm_format
from .errors import ModelFormatError


def encode(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` (no special tokens added: the prompt writes `[gMASK]<sop>` itself).

    A `glm_format.Prompt` is encoded chunk by chunk (`Prompt.encoding_chunks`) so its message text
    never becomes special tokens; a plain string is encoded as written, special-token text included.
    """
    chunks = prompt.encoding_chunks() if isinstance(prompt, glm_format.Prompt) else [str(prompt)]
    if len(chunks) == 1:
        return [int(t) for t in tokenizer.encode(chunks[0], add_special_tokens=False).input_ids.data[0]]
    encoded = tokenizer.encode(chunks, add_special_tokens=False, padding_side="right")
    ids: list[int] = []
    for row, mask in zip(encoded.input_ids.data, encoded.attention_mask.data, strict=True):
        ids.extend(int(t) for t in row[: int(mask.sum())])
    return ids


def token_inputs(rows: Sequence[Sequence[int]], pad_id: int = 0):
    """`openvino_genai.TokenizedInputs` for prompts already turned into ids.

    Several rows are padded on the left, as GLM-4's tokenizer pads (`padding_side: left`), with the
    padding masked out. Shapes: input_ids and attention_mask are [len(rows), longest row], int64.
    """
    import numpy as np
    import openvino as ov
    import openvino_genai

    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row):] = row
            mask[index, width - len(row):] = 1
    return openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(mask))


def prompt_format(tokenizer, family: str, reasoning: bool) -> str:
    """Which published template the checkpoint's own chat template (kept in the tokenizer IR) is.

    The checkpoint's files say best what it was trained on, so its template is read first; a model
    without one, or with a template of its own, gets its family's (`glm_format.detect_prompt_format`).
    """
    template = ""
    for getter in ("get_original_chat_template", "get_chat_template"):
        try:
            template = getattr(tokenizer, getter)() or ""
        except (AttributeError, RuntimeError):
            continue
        if template:
            break
    return glm_format.detect_prompt_format(template, family, reasoning)


# Text whose ids tell two tokenizers apart: every GLM-4 special token, and ordinary text in the
# scripts GLM-4 serves, which exercises the merges.
TOKENIZER_PROBE = "".join(glm_format.PROTECTED_TOKENS) + " Hello, world! 你好，世界。123 def f(x):\n    return x\n"


def vocabulary_size(folder: Path) -> int | None:
    """The model's vocabulary (its embedding rows) from config.json; None if the folder does not say."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return int(config.get("vocab_size") or config.get("padded_vocab_size"))
    except (OSError, ValueError, TypeError):
        return None


def check_draft_tokenizer(folder: Path, draft_folder: Path) -> None:
    """Speculative decoding passes token ids between the models: refuse a draft with another tokenizer.

    The two must have the same vocabulary size and give the same ids for `TOKENIZER_PROBE` (special
    tokens included). Raises ModelFormatError naming both vocabulary sizes (GLM-4: 151552; glm-edge:
    59264, from their public config.json).
    """
    import openvino_genai

    try:
        probes = [[int(t) for t in openvino_genai.Tokenizer(str(path)).encode(
            TOKENIZER_PROBE, add_special_tokens=False).input_ids.data[0]] for path in (folder, draft_folder)]
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFormatError(f"could not read the tokenizers of {folder} and --draft {draft_folder}: "
                               f"{reason}") from None
    size, draft_size = vocabulary_size(folder), vocabulary_size(draft_folder)
    if size == draft_size and probes[0] == probes[1]:
        return
    same = " (same size, different tokens)" if size == draft_size else ""
    raise ModelFormatError(f"--draft {draft_folder} has a {draft_size or 'unknown'}-token vocabulary but "
                           f"{folder.name} has {size or 'unknown'}{same}; a draft must share the model's "
                           "tokenizer (e.g. GLM-4-9B-0414 drafting for GLM-4-32B-0414)")
