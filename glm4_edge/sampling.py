"""Next-token choice over one logits row, for the models glm4-edge decodes itself (GLM-4V).

It follows openvino-genai's sampler, which the text models use, option for option: repetition
penalty over the prompt and the answer (a positive logit divided by it, a negative one multiplied),
presence and frequency penalties over the answer, then temperature (0: greedy), top-k, top-p
(nucleus, the smallest set whose probability reaches top_p) and a draw from a seeded generator.
"""

from __future__ import annotations

import secrets

import numpy as np

from .options import SEED_BITS, GenerationOptions


class Sampler:
    """Picks tokens for one answer; `prompt_ids` count towards the repetition penalty."""

    def __init__(self, options: GenerationOptions, prompt_ids: list[int]):
        self.options = options
        self.seen = set(prompt_ids)
        self.counts: dict[int, int] = {}
        seed = options.seed if options.seed is not None else secrets.randbits(SEED_BITS)
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        """The next token id from a [vocab] logits row (float)."""
        o = self.options
        logits = np.asarray(logits, dtype=np.float32).copy()
        if o.repetition_penalty != 1.0 and (self.seen or self.counts):
            ids = np.fromiter(self.seen | set(self.counts), dtype=np.int64)
            ids = ids[ids < logits.shape[0]]
            values = logits[ids]
            logits[ids] = np.where(values > 0, values / o.repetition_penalty, values * o.repetition_penalty)
        if self.counts and (o.presence_penalty or o.frequency_penalty):
            ids = np.fromiter(self.counts, dtype=np.int64)
            counts = np.fromiter(self.counts.values(), dtype=np.float32)
            logits[ids] -= o.presence_penalty + o.frequency_penalty * counts
        if o.temperature == 0:
            token = int(np.argmax(logits))
        else:
            token = self._draw(logits / np.float32(o.temperature))
        self.counts[token] = self.counts.get(token, 0) + 1
        return token

    def _draw(self, logits: np.ndarray) -> int:
        o = self.options
        order = np.argsort(-logits, kind="stable")
        if o.top_k:
            order = order[:o.top_k]
        chosen = logits[order].astype(np.float64)
        probs = np.exp(chosen - chosen.max())
        probs /= probs.sum()
        if o.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), o.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])
