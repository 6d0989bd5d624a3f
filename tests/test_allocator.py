"""keep_freed_memory: freed large blocks are reused without page faults (glibc only)."""

import json
import subprocess
import sys

import pytest

# One "step" allocates and touches four large tensors (208 MiB in all) and frees them, as a training step does with
# its activations; the probe prints the page faults of each of six steps.
PROBE = """
import json, resource, sys, torch
from densenet.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(size * 2**18).fill_(1.0) for size in (64, 32, 48, 64)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([step() for _ in range(6)]))
"""
PAGES = 208 * 2**20 // 4096


def _faults_per_step(mode: str) -> list[int]:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    assert all(faults > PAGES // 2 for faults in _faults_per_step("default")[2:])  # mmap'd and returned every step
    assert all(faults < PAGES // 20 for faults in _faults_per_step("keep")[3:])  # the heap's pages, reused
