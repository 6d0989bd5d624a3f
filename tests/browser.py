"""A real browser for the HTML report's tests: headless Chromium (Debian's ``chromium`` package) renders a page
offline, and we read back its DOM and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--disable-extensions"]


def chromium() -> str | None:
    """The Chromium executable, if installed."""
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


@dataclass
class Rendering:
    dom: str
    loaded: int
    total: int
    screenshot: np.ndarray  # (height, width, 3) uint8


def render(page: Path, picture: Path, width: int = 1200, height: int = 4000) -> Rendering:
    """Render ``page`` once with no network (every host name fails to resolve): its DOM after the load event, the
    count of images that decoded (the page's own script writes it to ``<body data-images-loaded="N/M">``), and a
    screenshot written to ``picture``."""
    browser = chromium()
    assert browser, "chromium is not installed (apt-get install -y chromium)"
    dom = subprocess.run([browser, *OFFLINE, f"--window-size={width},{height}", f"--screenshot={picture}",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    loaded, total = (int(found[1]), int(found[2])) if found else (0, -1)
    return Rendering(dom, loaded, total, np.asarray(Image.open(picture).convert("RGB")))


def check_report(page: Path, picture: Path, sections: tuple[str, ...]) -> Rendering:
    """Fail unless the page refers to no other host, renders offline with every image decoded and every section
    present, and its screenshot is neither blank nor colourless (plots and heatmaps drawn)."""
    text = page.read_text()
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", text)
    assert not remote, f"the page refers to other hosts: {remote}"
    rendering = render(page, picture)
    assert rendering.total > 0, "the page's image count never ran"
    assert rendering.loaded == rendering.total, f"only {rendering.loaded} of {rendering.total} images loaded"
    missing = [key for key in sections if f'<section id="{key}">' not in rendering.dom]
    assert not missing, f"sections missing: {missing}"
    pixels = rendering.screenshot.reshape(-1, 3).astype(int)
    colours = np.unique(pixels @ np.array([1 << 16, 1 << 8, 1]))  # one int per RGB colour
    assert len(colours) > 500, "the screenshot is nearly blank"
    saturated = pixels[:, 0] - np.maximum(pixels[:, 1], pixels[:, 2]) > 80  # jet's reds, the curves' orange
    assert saturated.sum() > 500, "no plot or heatmap colours in the screenshot"
    return rendering
