"""Counting the changes to inference modules that make what they cached stale, so that a forward checks one counter
instead of every convolution module.

A dense block's oneDNN plan (:mod:`densenet.deploy.onednn_loop`) is made from its 2·L convolutions' weights, and its
compiled loops bypass the convolution modules, which is only right while none of them has a forward hook. Checking
both by reading each module on every forward costs ~50 µs of Python per block in a tight loop and 200–360 µs inside
a network, where the modules' objects have left the caches by the time the next block runs (benchmarks/NOTES.md,
"Python between the plans"). Here each convolution module counts, in a :class:`Revision` it shares with the other
modules of its block, every replacement of a buffer (assigned, registered again, or converted by ``.to()`` and the
like), every cleared cache, and every forward (pre-)hook registered. In-place changes to a weight are not seen here:
the tensors' version counters are (``onednn_loop.PlanCache``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class Revision:
    """Counters shared by a group of modules: ``weights`` — buffers replaced or caches cleared; ``hooks`` — forward
    hooks registered; ``unhooked_at`` — the ``hooks`` count at which a full check last found no hook (see
    :func:`densenet.deploy.layer_loop.hooked`)."""

    def __init__(self) -> None:
        self.weights = 0
        self.hooks = 0
        self.unhooked_at = -1


class Tracked(nn.Module):
    """A module that counts its buffer replacements and forward-hook registrations in :attr:`revision` (its own
    until a block gives its modules one to share)."""

    def __init__(self) -> None:
        super().__init__()
        self.revision = Revision()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_buffers", ()):
            self.revision.weights += 1

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        super().register_buffer(name, tensor, persistent)
        self.revision.weights += 1

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Tracked:
        module = super()._apply(fn, recurse)
        self.revision.weights += 1
        return module

    def register_forward_hook(self, hook: Callable[..., Any], **kwargs: Any) -> RemovableHandle:
        self.revision.hooks += 1
        return super().register_forward_hook(hook, **kwargs)

    def register_forward_pre_hook(self, hook: Callable[..., Any], **kwargs: Any) -> RemovableHandle:
        self.revision.hooks += 1
        return super().register_forward_pre_hook(hook, **kwargs)


class TrackedList(nn.ModuleList):
    """A block's list of :class:`Tracked` modules, all sharing the block's :class:`Revision`: a module put in or
    taken out counts as a replaced weight (and takes the shared revision)."""

    def __init__(self, revision: Revision) -> None:
        super().__init__()
        self.revision = revision

    def _adopt(self, module: Any) -> None:
        if isinstance(module, Tracked):
            module.revision = self.revision
        self.revision.weights += 1

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module):
            self._adopt(value)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        super().add_module(name, module)
        self._adopt(module)

    def insert(self, index: int, module: nn.Module) -> None:
        super().insert(index, module)
        self._adopt(module)

    def __delitem__(self, index: int | slice) -> None:
        super().__delitem__(index)
        self.revision.weights += 1
