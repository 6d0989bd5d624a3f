"""Stopping on a signal: SIGINT (Ctrl-C) and SIGTERM end a run promptly, keeping what it has finished.

Python runs a signal handler in the main thread between two bytecodes, so a handler that only sets a flag is read
when the code gets round to it: after a training step that may take minutes (a large model, or a machine short of
memory and swapping), after a whole evaluation, never while the data is being loaded. Here a run is divided into
regions (:meth:`StopRequest.region`):

- *abortable* regions, where leaving at once loses nothing that a checkpoint does not hold: before training
  starts (reading the data, building the model), the forward and backward passes of a step before its optimiser
  update (the weights, optimiser and schedule are still those of the previous step), and the evaluation. A signal
  there, or one pending when such a region is entered, raises :class:`Stopped` at once;
- the rest (the optimiser update, writing weights, checkpoints and metrics), where the signal is noted and acted
  on at the next abortable region, so no file is left half-written and no state half-updated.

A second signal, wherever it lands, raises :class:`Stopped` with ``again`` set: the run ends without saving
(files are written atomically, so each is its old or its new version). Under ``torchrun`` the steps and the
evaluation are not abortable (the processes must leave a step together): every process stops after the step in
which any was asked to (:attr:`StopRequest.agreed`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import typing
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")
_END = object()


class Stopped(BaseException):
    """A stop signal ended an abortable region (a ``BaseException``, as ``KeyboardInterrupt``, so that no
    ``except Exception`` on the way swallows it).

    Attributes:
        signum: the signal.
        again: it was the second signal: the run leaves without saving.
    """

    def __init__(self, signum: int, again: bool = False) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.again = again


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT`` …"""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """Whether a stop was asked for in this process (:attr:`signum`, set by the handlers
    :meth:`handling_signals` installs), whether every process has agreed to stop after the current step
    (:attr:`agreed`, set by the step from the processes' requests), and which region the run is in.

    Args:
        immediate: steps and evaluations are abortable (one process); under ``torchrun`` they are not.
    """

    def __init__(self, immediate: bool = True) -> None:
        self.signum: int | None = None
        self.agreed = False
        self.immediate = immediate
        self._abortable = False

    @property
    def requested(self) -> bool:
        """A stop signal has arrived."""
        return self.signum is not None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: leave at once, without saving
            raise Stopped(signum, again=True)
        self.signum = signum
        if self._abortable:
            raise Stopped(signum)

    @contextlib.contextmanager
    def region(self, abortable: bool) -> Iterator[None]:
        """Within the block a signal raises :class:`Stopped` at once (``abortable``), or is noted for later; a
        signal noted before an abortable block raises as the block starts, and one noted in a block that is not
        abortable raises as it ends back into an abortable one."""
        previous = self._abortable
        self._abortable = abortable
        try:
            if abortable and self.signum is not None:
                raise Stopped(self.signum)
            yield
        finally:
            self._abortable = previous
        if previous and self.signum is not None:
            raise Stopped(self.signum)

    def fetching(self, batches: Iterable[T]) -> Iterator[T]:
        """The items of ``batches``, each fetched outside the abortable region: a loader worker hands a batch over
        through a socket, and leaving halfway would break the hand-over (the worker prints a traceback)."""
        iterator = iter(batches)
        while True:
            with self.region(False):
                item = next(iterator, _END)
            if item is _END:
                return
            yield typing.cast(T, item)

    def step_region(self) -> contextlib.AbstractContextManager[None]:
        """The region of a step's forward and backward passes (and of an evaluation): abortable in one process."""
        return self.region(self.immediate)

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Within the block, SIGINT and SIGTERM go to this request; the previous handlers come back after it.

        Off the main thread (where Python cannot install handlers) nothing is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
