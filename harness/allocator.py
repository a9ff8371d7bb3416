"""Keep freed CPU memory in the process (glibc): the first trial of a process otherwise trains ~40% slower.

glibc's malloc returns freed memory at the top of the heap to the kernel once it exceeds a trim threshold, and
serves large blocks with fresh mmaps; a training step frees and re-allocates the same activation buffers every
step, so each step page-faults them back in until glibc's adaptive thresholds catch up — in a fresh process that
took longer than a whole short trial. Measured (benchmarks/test_speed_v2.py::test_train_rate_does_not_depend_on_
trial_order, `full`, 1 epoch, one process): first 70.6 vs last 126.8 train img/s with glibc's defaults, 122.6 vs
117.7 with the thresholds below set through the environment. Setting them with ``mallopt`` has the same effect
in-process. Elsewhere (not glibc) this does nothing, and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 62  # never give the heap's top back to the kernel
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value: blocks up to 32 MiB come from the heap


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> dict[str, Any]:
    """Set the two glibc thresholds once per process; returns what was done (recorded with the timing warm-up)."""
    if not sys.platform.startswith("linux"):
        return {"applied": False, "why": f"not glibc ({sys.platform})"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {"applied": False, "why": "no mallopt in the C library"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = mallopt(M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1))
    mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return {"applied": bool(trim and mmap), "how": "glibc mallopt", "M_TRIM_THRESHOLD": 2**31 - 1,
            "M_MMAP_THRESHOLD": MMAP_THRESHOLD}
