"""Keeping freed memory in the process, so that a training step reuses pages instead of faulting in fresh ones.

By default glibc's ``malloc`` serves allocations above a threshold (dynamic, at most 32 MiB) with ``mmap`` and
returns them to the system on ``free``; the next step's tensors of the same size then fault in every page again
(each page fault also zero-fills 4 KiB). A densenet121 training step at 224×224, batch 16, allocates ~1 GB of such
pages; with the thresholds raised it reuses its heap (measured: 2.15 → 1.83 s per step on 2 cores, the resident
peak 5–15% higher). ``benchmarks/NOTES.md`` has the numbers.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of free heap top (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (``mallopt`` of the mmap and trim thresholds) for this process.

    Returns ``True`` when glibc took the settings, ``False`` where the C library is not glibc (nothing changes
    there; the reason is logged).
    """
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — present in glibc only
    except (OSError, AttributeError):
        log.info("the C library is not glibc: freed memory is handled by its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
