"""ONNX Runtime, set up once for the whole deploy room: the session that checks an export
(:func:`densenet.deploy.export.export_model`) is the one ``densenet bench`` times.

onnxruntime is imported inside the functions, so importing this module (or :mod:`densenet.deploy.optimize`, or
``densenet``) never loads it; it comes with ``pip install 'densenet[export]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def onnx_session(path: str | Path, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` for the ONNX file at ``path`` on the CPU with ``threads`` intra-op threads.

    One inter-op thread (a DenseNet graph is a chain), and no spin-waiting: ONNX Runtime's threads otherwise keep
    spinning after each run and take the cores from whatever runs next (the next configuration of a benchmark,
    PyTorch after an export check).

    Raises:
        ValueError: ``threads`` below 1.
        ImportError: onnxruntime is not installed.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_feed(session: Any, x: torch.Tensor) -> dict[str, Any]:
    """The input mapping for ``session.run``: the graph's one input (the image batch) bound to ``x`` as NumPy."""
    return {session.get_inputs()[0].name: x.detach().cpu().numpy()}


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    """The session's first output (the logits) for the batch ``x``: ``(N, C, H, W)`` → ``(N, num_classes)``."""
    return torch.from_numpy(session.run(None, onnx_feed(session, x))[0])
