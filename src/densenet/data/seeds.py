"""Seeds derived from integers, so that randomness depends on ``(seed, epoch, …)`` and never on the number
of workers or processes."""

from __future__ import annotations


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same in every process and Python session."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = ((state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF
