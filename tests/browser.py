"""Screenshots in a real browser (Debian's headless Chromium), saved where CI keeps test artefacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The flags the machine's browser needs here: no sandbox as root, no GPU, and no background connections,
# which this network refuses.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    """The browser's executable; the test is skipped, saying how to install it, where there is none."""
    found = os.environ.get("TLP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (CI's .ci/run installs it) or set TLP_CHROMIUM")
    return found


def artefact_path(name: str) -> Path:
    """Where a screenshot is kept after the test: TLP_TEST_ARTIFACTS, else test-artifacts/ in the repository."""
    directory = Path(os.environ.get("TLP_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def screenshot(url: str, name: str, width: int = 1200, height: int = 4000) -> Path:
    out = artefact_path(name)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        completed = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={out}", url], capture_output=True, text=True, timeout=120, check=False)
    assert out.is_file(), f"Chromium wrote no screenshot (exit {completed.returncode}): {completed.stderr[-2000:]}"
    return out


def ink_share(png: Path) -> float:
    """The share of pixels that are not near-white: a blank or failed page scores about 0."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3]
    return float((pixels.mean(axis=2) < 0.9).mean())
