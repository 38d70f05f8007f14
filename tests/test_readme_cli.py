"""The README's command-line examples work from a fresh shell, exactly as written, and the
CLI's help reads right (flags without a value, the task names listed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ROOT, free_port
from tests.test_dev_serve import checkout

pytestmark = pytest.mark.slow
__all__ = ["checkout"]

README = (ROOT / "README.md").read_text()
SECRET = "readme-secret-0123456789-abcdefghijklmn"


def _cli_block() -> list[str]:
    section = README[README.index("\n## Command line"):]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def _fresh_shell(repo: Path) -> dict[str, str]:
    # No virtualenv on PATH, no settings but the .env of the checkout.
    path = os.pathsep.join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                           if ".venv" not in p)
    return {"PATH": path, "HOME": str(repo.parent), "LANG": "C.UTF-8"}


def test_readme_cli_examples_run_as_written_from_a_fresh_shell(checkout: Path) -> None:
    (checkout / ".env").write_text(f"APP_ENV=development\nCRON_SECRET={SECRET}\n")
    env = _fresh_shell(checkout)
    commands = _cli_block()
    assert any(" serve" in c for c in commands) and any(" list" in c for c in commands)
    for command in commands:
        if " serve" in command:
            port = free_port()
            command = command.replace("--port 8000", f"--port {port}")
            proc = subprocess.Popen(["sh", "-c", command], cwd=checkout, env=env,
                                    start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                _wait_for(f"http://127.0.0.1:{port}/health")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            continue
        result = subprocess.run(["sh", "-c", command], cwd=checkout, env=env,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            assert httpx.get(url, timeout=2).status_code in (200, 503)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered on {url}")


def test_cli_help_shows_flags_as_flags_and_lists_the_tasks() -> None:
    from app.core.registry import JOBS

    cli = shutil.which("voyagesmart-cron", path=str(ROOT / ".venv" / "bin"))
    assert cli is not None
    result = subprocess.run([cli, "run", "--help"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text, text
    assert re.search(r"--dry-run\s+Report", text), text
    for name in JOBS:
        assert name in text, f"{name} missing from run --help"
