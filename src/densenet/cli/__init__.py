"""The ``densenet`` command: the parser assembled from one module per group of subcommands, and the error contract.

Every subcommand reports a user's mistake as one line on stderr and a non-zero exit: status 2 for a command line
argparse rejects (unknown flag, value of the wrong type), 1 for everything else (unknown model, missing file, bad
value); a warning is one line too (``densenet train: warning: …``). Set ``DENSENET_DEBUG=1`` to see the traceback of
an error and Python's own warning format instead.

The groups: :mod:`~densenet.cli.models` (``summary``, ``list``), :mod:`~densenet.cli.train` (``train``, ``demo``),
:mod:`~densenet.cli.inference` (``eval``, ``predict``), :mod:`~densenet.cli.deploy` (``export``, ``bench``),
:mod:`~densenet.cli.explain` (``explain``, ``report``); what
they share is in :mod:`~densenet.cli.common`.

May import: every room. The subcommands import the rooms they use when they run, so ``densenet list`` does not
load the training engine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from densenet import __version__
from densenet.cli import deploy, explain, inference, models, train
from densenet.cli.common import Handler, OneLineErrorParser, log_to_stderr, usage_error
from densenet.extensions import first_line
from densenet.training.signals import Stopped

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (subcommand parsers share its class)."""
    parser = OneLineErrorParser(prog="densenet", description="DenseNet: summary, train, eval, predict, export.")
    parser.add_argument("--version", action="version", version=f"densenet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (models, train, inference, deploy, explain):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user's mistake prints one line on stderr and returns a non-zero code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand they were given to, not after `densenet`
        parser.exit(2, usage_error(f"densenet {args.command}", f"unrecognized arguments: {' '.join(extra)}"))
    if args.command in ("train", "demo", "eval"):
        log_to_stderr()
    handler: Handler = args.handler
    with warnings.catch_warnings():  # restores the process's warning display when the command returns
        if not os.environ.get("DENSENET_DEBUG"):
            warnings.showwarning = _one_line_warning(f"densenet {args.command}")
        return _run(handler, args)


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Call the subcommand and turn what it raises into the exit status and the one line on stderr."""
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # the reader went away (`densenet predict DIR | head`): end quietly, as SIGPIPE would
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except Stopped as stopped:  # a stop signal before training started, or a second one
        what = ("a second " + str(stopped) + ": left without saving (files written before are complete)"
                if stopped.again else str(stopped) + " before training started: nothing to save")
        print(f"densenet {args.command}: stopped by {what}", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:
        print("densenet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, MemoryError, RuntimeError) as error:
        if os.environ.get("DENSENET_DEBUG") or (isinstance(error, RuntimeError) and not _out_of_memory(error)):
            raise
        message = first_line(error)
        if isinstance(error, (MemoryError, RuntimeError)):
            message = f"out of memory ({message[:200]}): use a smaller batch, image or model"
        print(f"densenet {args.command}: error: {message}", file=sys.stderr)
        return 1


def _one_line_warning(prog: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``densenet train: warning: <first line of the message>`` (through
    tqdm, so a progress bar is not broken) instead of Python's two lines quoting the source that warned."""
    from tqdm import tqdm

    def show(message: Warning, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:
        tqdm.write(f"{prog}: warning: {first_line(message).removeprefix('densenet: ')}", file=file or sys.stderr)

    return show


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured in tests)
        pass


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's report of a failed allocation (CPU or CUDA)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


if __name__ == "__main__":
    sys.exit(main())
