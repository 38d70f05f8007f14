"""`python3 dev.py serve` from a fresh checkout gives a working dashboard and says how to
reach it, on the port asked for in either spelling."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ROOT, free_port

pytestmark = pytest.mark.slow

_NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "data", ".env", "__pycache__",
                                     "*.egg-info", ".pytest_cache", ".mypy_cache",
                                     ".ruff_cache", "test-output", "bench")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The project as cloned, sharing this checkout's already installed .venv."""
    stamp = ROOT / ".venv" / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + b"[dev]").hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        # dev.py in the copy would reinstall the package into the shared .venv from there.
        pytest.fail(".venv is not installed for this pyproject.toml; run `python3 dev.py "
                    "test`", pytrace=False)
    repo = tmp_path / "voyagesmart-cron"
    shutil.copytree(ROOT, repo, ignore=_NOT_COPIED)
    (repo / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    return repo


def _fresh_shell_env(home: Path) -> dict[str, str]:
    # Nothing of the suite's own settings (APP_ENV=test, …): what a newcomer's shell has.
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "HOME": str(home)}


def _serve(repo: Path, port_args: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "dev.py", "serve", *port_args], cwd=repo,
                            env=_fresh_shell_env(repo.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "dashboard:" in line:
            return proc, lines
    _stop(proc)
    raise AssertionError("dev.py serve printed no dashboard line:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # dev.py and the server it started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers on {url}")


@pytest.mark.parametrize("spelling", ["--port N", "--port=N"])
def test_dev_serve_gives_a_dashboard_and_says_how_to_log_in(checkout: Path,
                                                            spelling: str) -> None:
    port = free_port()
    args = ["--port", str(port)] if spelling == "--port N" else [f"--port={port}"]
    proc, lines = _serve(checkout, args)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        printed = "\n".join(lines)
        assert f"{url}/api/cron/promo-cleanup" in printed  # the sample curl, on this port
        match = re.search(rf"dashboard: {re.escape(url)}/dashboard/ +\(login: (\S+) / (\S+)\)",
                          printed)
        assert match, printed
        user, password = match.groups()
        env_file = (checkout / ".env").read_text()
        assert f"DASHBOARD_USER={user}\n" in env_file
        assert f"DASHBOARD_PASSWORD={password}\n" in env_file
        page = httpx.get(f"{url}/dashboard/", auth=(user, password), timeout=30)
        assert page.status_code == 200, page.text
        assert "promo-cleanup" in page.text
        assert httpx.get(f"{url}/dashboard/", timeout=30).status_code == 401
    finally:
        _stop(proc)
    # A second start keeps the same login.
    proc, lines = _serve(checkout, args)
    _stop(proc)
    assert f"(login: {user} / {password})" in "\n".join(lines)
