"""Writing files: atomically (a file is either absent, the old version, or complete — never half-written), under
names that any file system takes."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_STEM = 100  # characters of a name kept in a file name (most file systems allow 255 bytes)
# names Windows reserves whatever the extension
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it the mode a new file gets under the user's umask
    and rename it over ``path``; on error delete it.

    Raises:
        FileNotFoundError: the parent directory of ``path`` does not exist.
        NotADirectoryError: the parent of ``path`` is a file.
        IsADirectoryError: ``path`` is a directory.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{path.parent} is a file, not a directory (writing {path.name})")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist (writing {path.name})")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; name a file to write")
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # same suffix: some writers check it
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # what a plain open() gives: some writers (safetensors) use 0600
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def safe_file_stem(name: str) -> str:
    """``name`` (a class or label name) as a file-name stem: ASCII letters, digits, ``.``, ``_`` and ``-`` kept, every
    other run of characters (``/``, blanks, ``:``, non-ASCII …) one ``_``; no leading dot or ``-``; at most
    :data:`MAX_STEM` characters; ``label`` for a name with nothing left; a reserved device name (``NUL``) followed by
    ``_``. Distinct names may give the same stem: callers that write several keep them apart."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".-")[:MAX_STEM] or "label"
    return stem + "_" if stem.split(".")[0].upper() in RESERVED else stem


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
