"""glibc malloc settings that make the CPU keep freed tensor memory for reuse, as CUDA's caching allocator does.

By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back on free,
and trims the heap top whenever 128 KiB of it is free. A training step allocates the same large
tensors every time (a [65536, 768] weight cast or gradient is 96-192 MiB; activations of a 4 x 512
batch are tens of MiB each), so each step page-faults all of them in anew, one fault per 4 KiB, and
zero-fills them in the kernel. Measured with ``benchmarks/bench_sft.py`` on rwkv7-0.1b, ctx 512,
micro_bsz 4, 2 threads: trainer tokens/s 245 -> 293 (fp32), 416 -> 508 (bf16), 296 -> 417 (bf16 with
grad_cp), peak RSS within 0.1 GiB. Raising only the mmap threshold is not enough: the trim then hands
the same memory back from the heap top, and a 192 MiB fill measured 300 ms either way (11 ms with both).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_host_memory() -> bool:
    """Make this process's malloc serve large blocks from its heap and never trim it; True if applied.

    Process-wide and permanent (memory freed later stays mapped for reuse rather than returning to the
    system). A no-op returning False where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, _LARGEST) == 1 and mallopt(M_TRIM_THRESHOLD, _LARGEST) == 1
    logger.debug("glibc malloc keeps freed memory: %s", applied)
    return applied
