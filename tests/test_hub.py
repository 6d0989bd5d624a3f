"""Downloads into torch.hub's cache, against a loopback HTTP server (127.0.0.1 only, a handful of requests)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from densenet import hub


class _Server:
    """Serves the files of ``root`` on 127.0.0.1 and counts the requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[_Server, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    yield server, root
    server.close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(hub.MIRROR_VARIABLE, raising=False)
    return tmp_path / "torch_home"


def _publish(root: Path, stem: str, payload: bytes, prefix: str | None = None) -> str:
    """Write ``payload`` as ``<stem>-<sha256 prefix>.pth`` (or a given, possibly wrong, prefix)."""
    name = f"{stem}-{prefix or hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (root / name).write_bytes(payload)
    return name


def _cache_entries(torch_home: Path) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_lands_in_torch_hub_cache_and_is_reused_offline(served, torch_home, capsys):
    server, root = served
    payload = bytes(range(256)) * 4096  # 1 MiB: several chunks
    name = _publish(root, "weights", payload)
    path = hub.cached_file(f"{server.url}/{name}", progress=True)
    assert path == torch_home / "hub" / "checkpoints" / name and path.read_bytes() == payload
    assert server.requests == [f"/{name}"]
    assert name in capsys.readouterr().err  # the progress bar names the file
    server.close()  # no network from now on
    assert hub.cached_file(f"{server.url}/{name}") == path
    assert _cache_entries(torch_home) == [name]


def test_hash_mismatch_removes_the_download(served, torch_home):
    server, root = served
    name = _publish(root, "weights", b"not what the name promises", prefix="0123abcd")
    with pytest.raises(hub.DownloadError, match=r"does not match the hash 0123abcd.*place it at .*weights-0123abcd"):
        hub.cached_file(f"{server.url}/{name}", progress=False)
    assert _cache_entries(torch_home) == []  # neither the file nor a partial one


def test_unreachable_host_fails_fast_with_the_url_and_the_place_for_the_file(served, torch_home):
    server, _ = served
    url = f"{server.url}/densenet121-a639ec97.pth"
    server.close()  # nothing listens on that port any more
    started = time.monotonic()
    with pytest.raises(hub.DownloadError) as failure:
        hub.cached_file(url, progress=False)
    assert time.monotonic() - started < 5
    message = str(failure.value)
    assert url in message and str(torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in message
    assert "\n" not in message and _cache_entries(torch_home) == []


def test_missing_file_on_the_server_is_a_download_error(served):
    server, _ = served
    with pytest.raises(hub.DownloadError, match="404"):
        hub.cached_file(f"{server.url}/absent-0123abcd.pth", progress=False)


def test_mirror_variable_replaces_the_host_and_keeps_the_file_name(served, torch_home, monkeypatch):
    server, root = served
    name = _publish(root, "weights", b"mirrored bytes")
    monkeypatch.setenv(hub.MIRROR_VARIABLE, f"{server.url}/")
    path = hub.cached_file(f"http://127.0.0.1:9/models/{name}", progress=False)  # port 9: discard, never asked
    assert path.read_bytes() == b"mirrored bytes" and server.requests == [f"/{name}"]


def test_file_name_hash_prefix():
    assert hub.hash_prefix("densenet121-a639ec97.pth") == "a639ec97"
    assert hub.hash_prefix("model.safetensors") is None
    assert hub.file_name("https://example.org/models/densenet121-a639ec97.pth?x=1") == "densenet121-a639ec97.pth"
