"""A Hugging Face checkpoint run by PyTorch: the reference `glm4-edge eval` compares against.

Lives in the conversion package because it needs torch and transformers (the [convert] extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glm4_edge import glm_format
from glm4_edge.evaluate import MAX_ANSWER_TOKENS


class TorchEngine:
    """A Hugging Face checkpoint run by PyTorch (needs the [convert] extra): the reference."""

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = eos if isinstance(eos, list) else [eos]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer(self, messages: list[dict]) -> tuple[str, float | None]:
        ids = self.encode(glm_format.render_prompt(messages))
        with self.torch.no_grad():
            tensor = self.torch.tensor([ids])
            out = self.model.generate(tensor, attention_mask=self.torch.ones_like(tensor), do_sample=False,
                                      max_new_tokens=MAX_ANSWER_TOKENS, eos_token_id=self.stop_ids,
                                      pad_token_id=self.stop_ids[0])
        text = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        return glm_format.split_reasoning(text)[1], None

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors"))
