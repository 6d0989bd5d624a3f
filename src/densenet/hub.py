"""Weight files fetched once into torch.hub's cache, hash-checked before they enter it.

The cache is torch.hub's own (``$TORCH_HOME/hub/checkpoints``, see :func:`torch.hub.get_dir`), under the file
name of the URL, so a file torchvision downloaded is found here without any network, and the other way round. A
download goes to a temporary file beside its destination (:func:`densenet.fileio.atomic_path`); its SHA-256 is
checked against the hash prefix the file name carries (``densenet121-a639ec97.pth`` → ``a639ec97``, torch.hub's
convention), and only then is it renamed into place: the cache never holds half a file.
``DENSENET_WEIGHTS_MIRROR`` (a base URL) makes every download come from a mirror or a private registry instead,
keeping the file names.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from densenet.fileio import atomic_path

MIRROR_VARIABLE = "DENSENET_WEIGHTS_MIRROR"
TIMEOUT_SECONDS = 10.0
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A weights file could not be fetched or failed its hash check; the message names the URL and where the
    file can be placed by hand."""


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_name(url: str) -> str:
    """The last component of ``url``'s path: the name the file has in the cache."""
    return Path(urlsplit(url).path).name


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries after its last ``-`` (``densenet121-a639ec97.pth`` → ``a639ec97``)."""
    found = _HASH_PREFIX.search(name)
    return found.group(1) if found else None


def source_url(url: str) -> str:
    """``url``, or the same file name under ``$DENSENET_WEIGHTS_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip()
    return f"{mirror.rstrip('/')}/{file_name(url)}" if mirror else url


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file(url: str, progress: bool = True) -> Path:
    """The cached copy of ``url``'s file, downloaded first if the cache does not have it.

    Raises:
        DownloadError: the host is unreachable, answers with an error, or the downloaded bytes do not match the
            hash prefix of the file name (the partial file is removed).
    """
    name = file_name(url)
    destination = cache_dir() / name
    if destination.is_file():
        return destination
    source = source_url(url)
    by_hand = f"download it by hand and place it at {destination}"
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(destination) as temporary:
            with open(temporary, "wb") as out:
                _download(source, out, progress)
            expected = hash_prefix(name)
            if expected and not sha256_of(temporary).startswith(expected):
                raise DownloadError(f"{source} does not match the hash {expected} in its name: the download was "
                                    f"removed; {by_hand}")
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as error:
        reason = f"HTTP {error.code} {error.reason}" if isinstance(error, urllib.error.HTTPError) else (
            getattr(error, "reason", None) or error)
        raise DownloadError(f"cannot download {source} ({reason}); {by_hand}") from error
    return destination


def _download(url: str, out: object, progress: bool) -> None:
    """Stream ``url`` into the open binary file ``out`` with a tqdm progress bar (sized when the server says)."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=file_name(url),
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)  # type: ignore[attr-defined]
                bar.update(len(chunk))

