"""Prefill of long prompts in chunks, with progress and cancellation between chunks.

openvino-genai reports nothing until the first token, so a 30K-token document would sit silent for
minutes. Its CPU/GPU pipeline keeps a prefix cache (paged attention, enabled by `glm4_edge.load`):
generating one token for a prefix of the prompt leaves that prefix's KV blocks in the cache, and
the next, longer prefix recomputes only the new part. Feeding growing prefixes therefore fills the
cache chunk by chunk, with a progress report and a cancel check after each; the real generation
then finds the whole prompt cached. Each chunk costs one extra decode step (measured: +2% prefill time
for 8K tokens on the 8-layer GLM-4-9B-shaped model, README "Documents and tools"), so chunking starts
only above `DEFAULT_THRESHOLD_TOKENS`.

Chunks are sized to take about `DEFAULT_CHUNK_S` seconds at the rate measured so far, so progress
updates and Stop land within a few seconds wherever 256 tokens take that long or less (about 12 s a
chunk for GLM-4-9B on a 2-core CPU), and are multiples of
`CHUNK_ALIGN_TOKENS` so they end on KV-block boundaries (blocks of 16 or 32 tokens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_THRESHOLD_TOKENS = 4096
# The rate is unknown before the first chunk: one aligned chunk, so the first update comes soon even where
# 256 tokens take ~11 s (GLM-4-9B on a 2-core CPU, 24 tok/s; 1,024 tokens took ~40 s there).
DEFAULT_FIRST_CHUNK_TOKENS = 256
DEFAULT_CHUNK_S = 3.0
CHUNK_ALIGN_TOKENS = 256
MAX_CHUNK_TOKENS = 16384
# KV cache precisions openvino-genai 2026.4.1 cannot regrow: `KVCacheManager.allocate_cache_if_needed` copies
# a u4 cache's element count as bytes, twice its size, and corrupts the heap (`malloc(): invalid size`,
# reproduced with a chunked prefill on the 1-layer GLM-4-9B-shaped model). `glm4_edge.load` gives such a
# cache its whole size at load (`loading.presize_kv_cache`); only a cache that never regrows may take
# the chunked path, whose one-token calls regrow it every chunk.
UNSAFE_KV_PRECISIONS = ("u4",)
# Tokens per KV cache block of openvino-genai's CPU paged attention (`KVCacheManager`, cpu_block_size).
CPU_KV_BLOCK_TOKENS = 32


@dataclass(frozen=True)
class PrefillProgress:
    """Prefill state after a chunk: `done` of `total` prompt tokens in `elapsed_s` seconds."""

    done: int
    total: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.tokens_per_s
        return (self.total - self.done) / rate if rate else None

    def summary(self) -> str:
        eta = f"{self.eta_s:.0f} s left" if self.eta_s is not None else "estimating"
        return (f"reading the prompt: {self.done:,}/{self.total:,} tokens · {self.tokens_per_s:,.0f} tok/s · "
                f"{eta}")


def chunk_ends(total: int, first: int, rate_s: float | None, done: int, chunk_s: float = DEFAULT_CHUNK_S) -> int:
    """Where the next chunk ends: about `chunk_s` seconds of work at `rate_s` tok/s, block-aligned."""
    size = first if not rate_s else int(rate_s * chunk_s)
    size = max(CHUNK_ALIGN_TOKENS, min(MAX_CHUNK_TOKENS, size - size % CHUNK_ALIGN_TOKENS))
    end = done + size
    # The real generation computes the rest; leaving it under one aligned chunk avoids a tiny last call.
    return total if total - end < CHUNK_ALIGN_TOKENS else end


def fill_prefix(pipeline, input_ids, config, cancel: threading.Event | None,
                first_chunk: int = DEFAULT_FIRST_CHUNK_TOKENS,
                chunk_s: float = DEFAULT_CHUNK_S) -> Iterator[PrefillProgress]:
    """Run prefixes of `input_ids` (an ov.Tensor [1, N]) through `pipeline` so their KV lands in its cache.

    `config` is a GenerationConfig for one greedy token. Yields progress after each chunk and stops
    early (without error) when `cancel` is set; the last prefix stops short of the whole prompt,
    which the caller's generation then completes.
    """
    import numpy as np
    import openvino as ov
    import openvino_genai

    ids = np.asarray(input_ids.data)
    total = int(ids.shape[-1])
    started = time.perf_counter()
    done, rate = 0, None
    while True:
        end = chunk_ends(total, first_chunk, rate, done, chunk_s)
        if end >= total:
            return
        prefix = np.ascontiguousarray(ids[:, :end])
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(prefix), ov.Tensor(np.ones_like(prefix)))
        pipeline.generate(inputs, config)
        done = end
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else None
        yield PrefillProgress(done, total, elapsed)
        if cancel is not None and cancel.is_set():
            return
