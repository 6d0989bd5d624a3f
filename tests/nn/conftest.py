"""The dense block's two ways of computing its BN-ReLUs on the CPU: the fused kernels (densenet.nn.fused) and
ATen's operations (what CUDA, float16 and torch.compile run). Block tests take ``block_kernels`` to run in both."""

from collections.abc import Iterator

import pytest
import torch

from densenet.nn import fused


@pytest.fixture(params=["fused", "aten"])
def block_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs the test with the fused kernels (which must have been built: a test in that mode fails otherwise) and
    again with ATen's operations."""
    monkeypatch.setenv(fused.SWITCH, "1" if request.param == "fused" else "0")
    assert fused.applies(torch.zeros(1, 1, dtype=torch.float64)) == (request.param == "fused"), (
        "the fused CPU kernels were not built (see the RuntimeWarning)")
    yield request.param
