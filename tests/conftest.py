"""Shared fixtures. Helper functions the tests import by name live in ``helpers.py`` and ``imagefolder.py``
(on the test path through ``pythonpath`` in pyproject.toml), never here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The ``densenet`` logger's messages (the CLI may have turned its propagation to the root logger off)."""
    logger = logging.getLogger("densenet")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="session")
def densenet_logger_state() -> tuple[list[logging.Handler], int, bool]:
    """The ``densenet`` logger as the session found it: handlers, level, propagation."""
    logger = logging.getLogger("densenet")
    return list(logger.handlers), logger.level, logger.propagate


@pytest.fixture(autouse=True)
def densenet_logger_restored(densenet_logger_state: tuple[list[logging.Handler], int, bool]) -> Iterator[None]:
    """After each test the ``densenet`` logger is as the session found it: the CLI, run in-process by some tests
    (and by module-scoped fixtures), adds a stderr handler and stops propagation for the life of its process."""
    yield
    handlers, level, propagate = densenet_logger_state
    logger = logging.getLogger("densenet")
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
