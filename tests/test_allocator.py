"""glibc's heap under a growing KV cache: `glm4_edge.load` fixes the mmap threshold (glm4_edge.allocator).

Why it matters is measured, not tested here (a 64K-token chunked prefill takes minutes): peak RSS
2.76 GiB without it, 0.67 GiB with it, on the 1-layer GLM-4-9B-shaped model (docs/documents.md).
These tests pin the mechanism in a fresh process each: after glibc's dynamic threshold has been
raised by freeing a big block, a 2 MiB block is still mapped (so it goes back to the OS when freed)
only if the threshold was fixed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

PROBE = r"""
import ctypes, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1]:
    import glm4_edge
    glm4_edge.load(sys.argv[1], warm_up=False)
libc.free(libc.malloc(8 << 20))  # glibc's dynamic threshold rises to 8 MiB here
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped_growth(model: str, **env: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, model], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_load_keeps_big_blocks_mapped(tiny_int4):
    assert _mapped_growth("") == 0  # glibc's default: the 2 MiB block comes from the heap
    assert _mapped_growth(str(tiny_int4)) >= 2 << 20  # after load: mapped, given back when freed


def test_users_own_threshold_wins():
    code = "from glm4_edge.allocator import limit_heap_retention as f; print(f())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "4194304"})
    assert run.stdout.split() == ["False"], run.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"})
    assert run.stdout.split() == ["True"], run.stderr[-2000:]
