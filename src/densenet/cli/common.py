"""What every subcommand module shares: argument types, the one-line-error parser, logging to stderr."""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
"""A subcommand: parsed arguments in, exit status out."""

def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"must be below 2**31, got {value}")
    return value


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help texts end with ``(default: X)`` where an option has a default worth showing (not ``None``, ``False`` or
    suppressed) and its text does not already say what its default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or "default" in text
                or isinstance(action, argparse._HelpAction | argparse._VersionAction)):
            return action.help
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown})" if shown else action.help


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, bad value, missing argument) reported as one line,
    ``densenet train: error: … (see densenet train --help)``, and exit status 2; help texts show defaults
    (:class:`DefaultsHelpFormatter`)."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, usage_error(self.prog, message))


def usage_error(prog: str, message: str) -> str:
    """The one line a command line that does not parse prints (newline included)."""
    return f"{prog}: error: {message} (see {prog} --help)\n"


def log_to_stderr() -> None:
    """Show the engine's log lines (``densenet`` logger) on stderr, without breaking progress bars."""
    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stderr)

    logger = logging.getLogger("densenet")
    if not logger.handlers:
        logger.addHandler(TqdmHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
