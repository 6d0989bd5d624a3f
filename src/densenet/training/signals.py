"""Stopping on a signal: SIGINT (Ctrl-C) and SIGTERM finish the current step, then the run saves and stops."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("densenet")


class StopRequest:
    """Whether a stop was asked for in this process (:attr:`requested`, set by the signal handlers
    :meth:`handling_signals` installs) and whether every process has agreed to stop after the current step
    (:attr:`agreed`, set by the step from the processes' requests). Kept apart, a signal that arrives after the
    step has read the requests is not lost: it is read at the next step.

    Args:
        announce: log the "stopping after this step" line (rank 0 only).
    """

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.agreed = False
        self.announce = announce

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: abort at once, without saving
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            logger.info("stopping after this step (Ctrl-C again to abort without saving)")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Within the block, SIGINT and SIGTERM set :attr:`requested`; the previous handlers come back after it.

        Off the main thread (where Python cannot install handlers) nothing is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
