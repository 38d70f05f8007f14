"""Debian's Chromium, driven by Playwright, for the dashboard's browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_chromium() -> None:
    """Skip without Chromium; under CI=true fail instead (the browser test must run)."""
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message + " (CI=true: the browser test must run)", pytrace=False)
        pytest.skip(message)


def launch(pw: Any) -> Any:
    """A headless Chromium (Playwright's own browser download cannot work here)."""
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run"])
