"""Screenshots in a real browser (Debian's headless Chromium), saved where CI keeps test artefacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def webdriver() -> Any:
    """A Selenium session on Debian's Chromium and its chromedriver (never a downloaded browser or driver)."""
    from selenium import webdriver as selenium_webdriver
    from selenium.webdriver.chrome.service import Service

    driver = os.environ.get("TLP_CHROMEDRIVER") or shutil.which("chromedriver")
    if driver is None:
        pytest.skip("no chromedriver here: `apt-get install chromium-driver` (CI's .ci/run installs it) or set TLP_CHROMEDRIVER")
    options = selenium_webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in (*CHROMIUM_FLAGS, "--window-size=1600,1100"):
        options.add_argument(flag)
    session = selenium_webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(120)
    return session


def page_text_has(session: Any, texts: Sequence[str], timeout_s: float = 90) -> None:
    """Wait until the page's visible text holds every one of ``texts`` (single-page apps render late)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def holds(_: object) -> bool:
        body = session.find_element(By.TAG_NAME, "body").text
        return all(text in body for text in texts)

    try:
        WebDriverWait(session, timeout_s).until(holds)
    except Exception as err:  # name what was missing, with what the page showed
        body = session.find_element(By.TAG_NAME, "body").text
        missing = [text for text in texts if text not in body]
        raise AssertionError(f"{session.current_url} never showed {missing}; it showed:\n{body[:3000]}") from err
