"""Processes and devices: one process, or one of ``torchrun``'s (DistributedDataParallel, gloo on CPU, NCCL on CUDA).

``torchrun`` announces itself with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in the environment; seeing them,
:func:`setup` joins the process group. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process runs.

    Attributes:
        rank: index of this process among ``world_size``.
        world_size: number of processes (1 without torchrun).
        local_rank: index on this machine (selects the GPU).
        device: the device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and logs."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (GPU ``local_rank``) if available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given.

    Raises:
        ValueError: CUDA asked for but not available, or an unknown device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def setup(device_name: str = "auto") -> Context:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1); pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        if world_size > 1 and device.index != local_rank:
            raise ValueError(f"under torchrun each process takes the GPU of its local rank: use --device cuda or "
                             f"auto, not {device_name!r}")
        torch.cuda.set_device(device)  # pinned-memory threads and new tensors follow the run's GPU, not GPU 0
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def cleanup(context: Context) -> None:
    """Leave the process group joined by :func:`setup`."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, context: Context, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """Combine ``tensor`` over all processes (in place on a copy on this process's device); returns it on the CPU."""
    if not context.distributed:
        return tensor
    reduced = tensor.to(context.device)
    dist.all_reduce(reduced, op=op)
    return reduced.cpu()


def gather(value: Any, context: Context) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(context: Context) -> None:
    """Wait for every process."""
    if context.distributed:
        dist.barrier()
