"""Explanations and reports: class activation maps on pytorch-grad-cam (:mod:`~densenet.explain.cam`, the public
:func:`~densenet.explain.api.explain` in :mod:`~densenet.explain.api`), their overlays and files
(:mod:`~densenet.explain.write`), the sanity checks that maps mean something (:mod:`~densenet.explain.checks`:
pointing game, weight randomisation), and the one-file HTML report of a run (:mod:`~densenet.explain.report`).

May import: the core, :mod:`densenet.nn`, :mod:`densenet.data`, :mod:`densenet.training`, :mod:`densenet.deploy`.
Imported by :mod:`densenet.cli`; ``import densenet`` loads it on first use of ``densenet.explain``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from densenet.explain.api import explain
from densenet.explain.cam import METHODS, Explanation

__all__ = ["METHODS", "Explanation", "explain"]


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`~densenet.explain.api.explain`.

    ``densenet.explain`` is both the public function and this room: importing any of its submodules makes Python
    bind the package as the attribute ``densenet.explain``, hiding a function of that name. So the package itself
    is callable, and ``densenet.explain(model, images)`` works however the package was reached.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> list[Explanation]:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
