"""The generated crontab and GitHub workflow call again while the answer is 202 `partial`.

A run stopped at its invocation's time budget answers 202; the next call of the slot
continues it.  Each scheduler file's own command runs against a real local HTTP server
answering a scripted sequence of statuses, which counts the calls: 202, 202, 200 is three
calls and success; a server that always answers 202 is called up to the bound and the
call fails loudly; a failure after a 202 fails as it does today.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.ops import deploy
from tests.conftest import SECRET
from tests.ops.test_scheduler_retries import _run_crontab_line, _run_workflow

pytestmark = pytest.mark.slow

WAYS = ["crontab", "github"]


class Scripted:
    """A local HTTP server answering the statuses of `script` in turn (the last one
    repeated), after `delay` seconds each."""

    def __init__(self, script: list[int], delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.calls: list[str] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                scripted.calls.append(self.path)
                n = len(scripted.calls)
                status = scripted.script[min(n, len(scripted.script)) - 1]
                time.sleep(scripted.delay)
                state = "partial" if status == 202 else "success" if status == 200 else "error"
                body = f'{{"call": {n}, "status": "{state}"}}'.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted([200])
    yield server
    server.close()


def _call(way: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if way == "crontab":
        return _run_crontab_line("trip-reminders", url, tmp_path)
    return _run_workflow(url, tmp_path, task="trip-reminders")


@pytest.mark.parametrize("way", WAYS)
def test_partial_answers_are_called_again_until_the_run_is_done(
        scripted: Scripted, tmp_path: Path, way: str) -> None:
    scripted.script = [202, 202, 200]
    result = _call(way, scripted.url, tmp_path)
    assert scripted.calls == ["/api/cron/trip-reminders"] * 3, (result.stdout, result.stderr)
    assert result.returncode == 0, (result.stdout, result.stderr)
    for n, state in ((1, "partial"), (2, "partial"), (3, "success")):
        assert f'{{"call": {n}, "status": "{state}"}}\n' in result.stdout


@pytest.mark.parametrize("way", WAYS)
def test_a_run_that_stays_partial_stops_at_the_bound_and_fails(
        scripted: Scripted, tmp_path: Path, way: str) -> None:
    scripted.script = [202]
    result = _call(way, scripted.url, tmp_path)
    assert len(scripted.calls) == deploy.PARTIAL_MAX_CALLS, result.stderr
    assert result.returncode != 0
    assert f"still partial after {deploy.PARTIAL_MAX_CALLS} call(s)" in result.stderr


@pytest.mark.parametrize("way", WAYS)
def test_a_failure_after_a_partial_answer_fails_as_before(
        scripted: Scripted, tmp_path: Path, way: str) -> None:
    scripted.script = [202, 500]
    result = _call(way, scripted.url, tmp_path)
    assert len(scripted.calls) == 2  # a 500 is never called again
    assert result.returncode != 0
    assert "still partial" not in result.stderr


def test_the_loop_starts_no_call_past_its_time_bound(scripted: Scripted,
                                                     tmp_path: Path) -> None:
    """CALL_MAX_SECONDS bounds the loop in time (for a task whose MAX_TIME is shorter)."""
    scripted.script, scripted.delay = [202], 0.4
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "url").write_text(scripted.url + "\n")
    (conf / "auth-header").write_text(f"Authorization: Bearer {SECRET}\n")
    script = conf / "call-task"
    shutil.copy(deploy.PATHS["call"], script)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VOYAGESMART_CRON_CONF": str(conf),
           "CALL_MAX_SECONDS": "2"}
    started = time.monotonic()
    result = subprocess.run(["/bin/sh", str(script), "trip-reminders", "1"], env=env,
                            capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert result.returncode != 0 and "still partial" in result.stderr, result.stderr
    # Seconds are whole in sh: the bound is reached after 2 to 3 s of 0.4 s calls.
    assert 2 <= len(scripted.calls) <= 9, len(scripted.calls)
    assert took < 5
