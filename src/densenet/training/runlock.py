"""One run at a time in a run directory: ``RUN_DIR/run.lock``, held with ``fcntl.flock`` while a run writes there.

The kernel releases a ``flock`` when its process ends, however it ends, so a lock left by a killed run is stale by
construction: the next run takes it over (and says whose it was). The pid inside only names the holder in the
message. A start that fails before the run's first checkpoint removes the directory it created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from densenet.training.checkpoint import CHECKPOINT_FILE

logger = logging.getLogger("densenet")

LOCK_FILE = "run.lock"


class RunDirectoryLocked(ValueError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(run_dir: Path, active: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (creating ``run_dir`` if needed); nothing when not ``active`` (the
    processes of a torchrun other than rank 0).

    Raises:
        RunDirectoryLocked: another live process holds it (the message names its pid).
    """
    if not active:
        yield
        return
    created = [path for path in (run_dir, *run_dir.parents) if not path.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    descriptor = acquire(path)
    try:
        yield
    except BaseException:
        if created and not (run_dir / CHECKPOINT_FILE).exists():  # failed before anything worth keeping
            shutil.rmtree(created[-1], ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _same_file(descriptor, path):
                path.unlink()
        os.close(descriptor)


def acquire(path: Path) -> int:
    """Open ``path`` (created if missing), take its ``flock`` without waiting and write this pid into it; return
    the descriptor (closing it releases the lock). A lock file whose holder is gone is taken over.

    Raises:
        RunDirectoryLocked: a live process holds the lock.
    """
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunDirectoryLocked(f"{path.parent} is in use by another run{_holder(holder)}; wait for it to end "
                                     "or choose another --out") from None
        if _same_file(descriptor, path):  # not unlinked by its last holder between our open and flock
            break
        os.close(descriptor)
    previous = _read_pid(descriptor)
    if previous is not None and previous != os.getpid():
        logger.info("taking over the lock of %s left by pid %d, which no longer holds it", path.parent, previous)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        here, there = os.fstat(descriptor), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _holder(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f" (pid {pid} has ended; its loader workers may still hold the lock for a few seconds)"
    except PermissionError:
        pass
    return f" (pid {pid})"
