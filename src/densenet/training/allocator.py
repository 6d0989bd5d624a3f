"""Keeping freed memory in the process, so that a training step reuses pages instead of faulting in fresh ones.

By default glibc's ``malloc`` serves allocations above a threshold (dynamic, at most 32 MiB) with ``mmap`` and
returns them to the system on ``free``; the next step's tensors of the same size then fault in every page again
(each page fault also zero-fills 4 KiB). A densenet121 training step at 224×224, batch 16, allocates ~1 GB of such
pages; with the thresholds raised it reuses its heap: steps get faster and the resident peak somewhat higher (see
``benchmarks/NOTES.md`` for the measurements).

The setting is process-wide and stays for the life of the process: memory freed after training is kept by the
process (up to the trim threshold) rather than given back. With another allocator preloaded (jemalloc, tcmalloc)
glibc's settings do not apply.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations up to 1 GiB from the heap; glibc versions that cap the threshold at HEAP_MAX_SIZE/2 (32 MiB on 64-bit)
# refuse that, and get the cap instead.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of free heap top (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (``mallopt`` of the mmap and trim thresholds) for this process.

    Returns ``True`` when glibc took both settings, ``False`` otherwise: not Linux, a C library other than glibc, or
    a setting refused (each reason is logged). Nothing else changes in those cases.
    """
    if not sys.platform.startswith("linux"):
        log.info("keep_freed_memory: glibc's malloc settings apply on Linux only (platform %s)", sys.platform)
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — present in glibc only
    except (OSError, AttributeError, TypeError):
        log.info("keep_freed_memory: the C library is not glibc; freed memory is handled by its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_set = any(mallopt(M_MMAP_THRESHOLD, threshold) for threshold in MMAP_THRESHOLDS)
    trim_set = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not (mmap_set and trim_set):
        log.info("keep_freed_memory: glibc refused %s", " and ".join(
            name for name, done in (("the mmap threshold", mmap_set), ("the trim threshold", trim_set)) if not done))
    return mmap_set and trim_set
