"""The C heap under long prompts: give big freed blocks back to the OS.

Each generate call of a chunked prefill allocates buffers sized by the context it has reached (the KV
cache among them: openvino-genai grows it on the CPU 256 tokens at a time, allocating bigger per-layer
tensors and copying the old ones, `KVCacheManager.allocate_cache_if_needed`, 2026.4). glibc's malloc
raises its mmap threshold to the size of the largest block freed (up to 32 MiB), so from then on such
buffers come from the heap, whose holes a slightly bigger buffer never fits and which glibc does not
hand back: the heap grew with every chunk. Measured with `benchmarks/long_prompt.py` and the 1-layer
and 8-layer GLM-4-9B-shaped INT4 models prefilling 64K tokens in chunks: 1 layer, peak RSS 2.76 GiB
with glibc's default and 0.68 GiB with the threshold fixed at 1 MiB, in about the same time (232 s vs
228 s; docs/data/chunked-prefill-heap-L1-64k.txt); 8 layers, 9.95 GiB and 3.92 GiB (docs/documents.md,
"KV cache memory"). A KV cache sized at load did not stop it (0.84 vs 0.57 GiB at 21K tokens on 1
layer): not the cache alone.

Written by hand over ctypes: glibc's `mallopt` is the interface, and no maintained Python package
wraps it. A user's own `MALLOC_MMAP_THRESHOLD_` wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

DEFAULT_MMAP_THRESHOLD_BYTES = 1 << 20  # blocks of 1 MiB and more are mapped, and unmapped when freed
M_MMAP_THRESHOLD = -3  # glibc malloc.h
_applied: int | None = None


def limit_heap_retention(threshold_bytes: int = DEFAULT_MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold_bytes` (process-wide, once); True if it is in force.

    False on a C library without `mallopt` (macOS, Windows) and when the user set
    `MALLOC_MMAP_THRESHOLD_` (glibc then already uses theirs). Never raises.
    """
    global _applied
    if _applied is not None:
        return _applied == threshold_bytes
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold_bytes) != 1:  # glibc returns 1 on success
        return False
    _applied = threshold_bytes
    return True
