"""The generated crontab and GitHub workflow retry only what cannot run a job twice.

Each scheduler file's own command runs against a real local HTTP server answering a chosen
status, and the server counts how many times curl called: a 500 (the job ran and failed,
the admins were alerted) or a 409 is called once; no connection, 429, and 503 with
Retry-After are retried; the answer's body is printed with a final newline.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.registry import JOBS
from app.ops import deploy
from tests.conftest import SECRET
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

RETRIES = deploy.CURL_RETRIES


@dataclass
class Answering:
    """A local HTTP server that answers every request with `status` (and `retry_after`)."""

    status: int = 200
    retry_after: str | None = None
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        answering = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                answering.calls.append((self.command, self.path,
                                        {k.lower(): v for k, v in self.headers.items()}))
                body = f'{{"status": {answering.status}}}'.encode()
                self.send_response(answering.status)
                if answering.retry_after is not None:
                    self.send_header("Retry-After", answering.retry_after)
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
def server() -> Iterator[Answering]:
    answering = Answering()
    yield answering
    answering.close()


def _run_crontab_line(task: str, base_url: str, tmp_path: Path
                      ) -> subprocess.CompletedProcess[str]:
    """The committed crontab's line for `task`, run as cron runs it (sh -c, the crontab's
    variables), with the configuration directory in a temporary place."""
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "url").write_text(base_url + "\n")
    (conf / "auth-header").write_text(f"Authorization: Bearer {SECRET}\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CALL_RETRY_DELAY": "0"}
    command = None
    for line in deploy.PATHS["crontab"].read_text().splitlines():
        assignment = re.match(r"^([A-Z_]+)=(.*)$", line)
        if assignment:
            env[assignment.group(1)] = assignment.group(2)
        elif line.strip() and not line.startswith("#") and line.endswith(f" {task} "
                                                                         f"{_max(task)}"):
            command = line.split(" ", 5)[5]
    assert command is not None, f"no crontab line for {task}"
    # Where the crontab says the files are, the test has them.
    command = command.replace("/etc/voyagesmart-cron", str(conf))
    env = {k: v.replace("/etc/voyagesmart-cron", str(conf)) for k, v in env.items()}
    shutil.copy(deploy.PATHS["call"], conf / "call-task")
    (conf / "call-task").chmod(0o755)
    return subprocess.run([env.get("SHELL", "/bin/sh"), "-c", command], env=env,
                          capture_output=True, text=True, timeout=60)


def _max(task: str) -> int:
    return deploy.curl_max_time(JOBS[task])


def _workflow_step() -> dict[str, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(deploy.PATHS["github"].read_text())
    [job] = workflow["jobs"].values()
    [step] = job["steps"]
    step_: dict[str, Any] = step
    return step_


def _run_workflow(base_url: str, tmp_path: Path, *, task: str = "promo-cleanup",
                  dry_run: str = "false", force: str = "false", schedule: str = ""
                  ) -> subprocess.CompletedProcess[str]:
    """The workflow step's script, run the way GitHub runs a `run:` step on ubuntu."""
    script = tmp_path / "step.sh"
    script.write_text(_workflow_step()["run"])
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CRON_SECRET": SECRET,
           "BASE_URL": base_url, "SCHEDULE": schedule, "INPUT_TASK": task if not schedule
           else "", "DRY_RUN": dry_run, "FORCE": force, "RUNNER_TEMP": str(runner_temp),
           "CALL_RETRY_DELAY": "0"}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                          env=env, capture_output=True, text=True, timeout=60)


def _run(way: str, base_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if way == "crontab":
        return _run_crontab_line("promo-cleanup", base_url, tmp_path)
    return _run_workflow(base_url, tmp_path)


WAYS = ["crontab", "github"]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("status", "retry_after", "calls", "ok"), [
    (200, None, 1, True),
    (500, None, 1, False),  # the job ran and failed: never run it again from here
    (409, None, 1, False),
    (400, None, 1, False),
    (401, None, 1, False),
    (503, None, 1, False),  # jobs disabled: retrying changes nothing
    (503, "0", 1 + RETRIES, False),  # database unreachable: nothing ran, try again
    (429, "0", 1 + RETRIES, False),
    (429, None, 1 + RETRIES, False),
])
def test_each_answer_is_called_as_often_as_it_is_safe(
        server: Answering, tmp_path: Path, way: str, status: int, retry_after: str | None,
        calls: int, ok: bool) -> None:
    server.status, server.retry_after = status, retry_after
    result = _run(way, server.url, tmp_path)
    assert len(server.calls) == calls, (result.stdout, result.stderr)
    assert (result.returncode == 0) is ok, (result.returncode, result.stdout, result.stderr)
    body = f'{{"status": {status}}}\n'
    assert body in result.stdout, result.stdout  # the body, ending with a newline
    method, path, headers = server.calls[0]
    assert (method, path) == ("POST", "/api/cron/promo-cleanup")
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-cron-source"] == ("crontab" if way == "crontab" else "github-actions")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("way", WAYS)
def test_no_connection_is_retried(tmp_path: Path, way: str) -> None:
    result = _run(way, f"http://127.0.0.1:{free_port()}", tmp_path)
    assert result.returncode != 0
    attempts = re.findall(r"curl: \(7\)", result.stderr)
    assert len(attempts) == 1 + RETRIES, result.stderr


def test_crontab_lines_are_plain_calls_of_the_script() -> None:
    lines = [line for line in deploy.PATHS["crontab"].read_text().splitlines()
             if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)]
    assert len(lines) == len(JOBS)
    for line in lines:
        argv = shlex.split(line.split(" ", 5)[5])
        assert argv[0] == "/etc/voyagesmart-cron/call-task"
        task, max_time = argv[1], int(argv[2])
        assert max_time == _max(task) > JOBS[task].max_runtime.total_seconds()
    code = [line for line in deploy.PATHS["call"].read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert not any("--retry" in line for line in code), \
        "curl's --retry would call a failed job again on a 500"
    assert not any("Bearer" in line or "CRON_SECRET" in line for line in code)


def test_manual_dispatch_can_force_a_slot_that_already_ran(server: Answering,
                                                           tmp_path: Path) -> None:
    inputs = yaml.safe_load(deploy.PATHS["github"].read_text())[True]["workflow_dispatch"][
        "inputs"]
    assert inputs["force"]["type"] == "boolean" and inputs["force"]["default"] is False
    assert _workflow_step()["env"]["FORCE"] == "${{ inputs.force }}"
    for force, dry_run, query in (("true", "false", "?force=true"),
                                  ("true", "true", "?dry_run=true&force=true"),
                                  ("false", "true", "?dry_run=true"),
                                  ("false", "false", "")):
        server.calls.clear()
        result = _run_workflow(server.url, tmp_path, force=force, dry_run=dry_run)
        assert result.returncode == 0, result.stderr
        assert [path for _m, path, _h in server.calls] == [f"/api/cron/promo-cleanup{query}"]


def test_a_scheduled_workflow_run_never_forces(server: Answering, tmp_path: Path) -> None:
    schedule = JOBS["promo-cleanup"].schedule
    result = _run_workflow(server.url, tmp_path, schedule=schedule, force="true")
    assert result.returncode == 0, result.stderr
    names = [n for n, spec in JOBS.items() if spec.schedule == schedule]
    assert [path for _m, path, _h in server.calls] == [f"/api/cron/{n}" for n in names]
