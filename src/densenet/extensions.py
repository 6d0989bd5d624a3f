"""Building the package's C++ sources on the user's machine (``torch.utils.cpp_extension``): the fused BN-ReLU
kernels of the explicit block (:mod:`densenet.nn.fused`) and the oneDNN layer loop of inference
(:mod:`densenet.deploy.onednn_loop`). Each is compiled on first use for the CPU it runs on and cached under
``$TORCH_EXTENSIONS_DIR`` (~20 s the first time)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch


@contextmanager
def _interpreter_tools_on_path() -> Iterator[None]:
    """The interpreter's own ``bin`` directory first on ``PATH`` while building: the ``ninja`` that pip installed
    with this package lives there, and a virtual environment run by its path (``.venv/bin/python``) is not on
    ``PATH``."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), before])
    try:
        yield
    finally:
        os.environ["PATH"] = before


def build(name: str, source: Path, cflags: list[str], ldflags: list[str], include_paths: tuple[str, ...] = (),
          python_module: bool = False) -> ModuleType | None:
    """Compile (or find in the cache) and load ``source`` as extension ``name`` + this CPU's capability (a build
    made with ``-march=native`` on one machine must not be loaded on another). Returns the Python module where
    ``python_module`` (pybind11), else None (the source registers ``torch.ops``). Raises what the build raises."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability().lower()
    with _interpreter_tools_on_path():
        module = load(name=f"{name}_{capability}", sources=[str(source)], extra_cflags=cflags,
                      extra_ldflags=ldflags, extra_include_paths=list(include_paths),
                      is_python_module=python_module, verbose=False)
    return module if python_module else None


def first_line(error: BaseException) -> str:
    """An exception's first line (a compiler's error output can run to pages), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
