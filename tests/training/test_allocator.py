"""keep_freed_memory: freed large blocks are reused without page faults (glibc only)."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One "step" allocates and touches four large tensors (208 MiB in all) and frees them, as a training step does with
# its activations; the probe prints the page faults of each of ten steps.
PROBE = """
import json, resource, sys, torch
from densenet.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(size * 2**18).fill_(1.0) for size in (64, 32, 48, 64)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([step() for _ in range(10)]))
"""
PAGES = 208 * 2**20 // 4096


def _glibc_with_small_pages() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        return False
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return not (thp.exists() and "[always]" in thp.read_text())  # huge pages would fault 512× less often


def _faults_per_step(mode: str) -> list[int]:
    # without the settings that change malloc or page sizes, so that "default" means glibc's defaults
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key not in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _glibc_with_small_pages(), reason="needs glibc's malloc and 4 KiB pages")
def test_freed_blocks_are_reused_without_page_faults():
    assert all(faults > PAGES // 2 for faults in _faults_per_step("default")[5:])  # mmap'd and returned every step
    # kept: after a few steps the heap holds a free block for each request (an occasional re-fault while the holes
    # settle), so the last five steps together fault in less than half of what one step did
    assert sum(_faults_per_step("keep")[5:]) < PAGES // 2
