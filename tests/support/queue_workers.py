"""`voyagesmart-cron worker` processes for queue-mode tests, and the queue's tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.conftest import SECRET
from tests.support.servers import ROOT, SmtpSink

SMALL_CHUNKS = Path(__file__).resolve().parent / "small_chunks"
QUEUE_TABLES = ("procrastinate_jobs", "procrastinate_workers", "procrastinate_periodic_defers",
                "procrastinate_events")


def queue_env(db_url: str, tmp_path: Path, sink: SmtpSink, **extra: str) -> dict[str, str]:
    """Every process of the deployment: the app, the workers.  Mail chunks of 200 messages
    (tests/support/small_chunks), so a run has many; two SMTP connections across them."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), str(SMALL_CHUNKS)]),
            "TEST_MAIL_CHUNK": "200", "APP_ENV": "test", "DATABASE_URL": db_url,
            "CRON_SECRET": SECRET,
            "DATA_DIR": str(tmp_path / "data"), "SMTP_HOST": sink.host,
            "SMTP_PORT": str(sink.port), "SMTP_SECURITY": "none", "CRON_CATCH_UP": "false",
            "TRIP_REMINDERS_SEND_BRAKE_COUNT": "100000", "EXECUTION_MODE": "queue",
            "QUEUE_POLLING_INTERVAL": "0.5", "SMTP_MAX_CONNECTIONS": "2", **extra}


def empty_queue(engine: Engine) -> None:
    """What earlier tests left in the session's database: jobs, workers, periodic marks."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(QUEUE_TABLES)} RESTART IDENTITY CASCADE")


class WorkerProcess:
    """`python -m app worker --name NAME`, configured by environment; its output in a file."""

    def __init__(self, env: dict[str, str], name: str, log_dir: Path) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--name", self.name], env=self.env,
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing cleaned up, as when a machine dies."""
        if self.alive and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive and self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for_workers(engine: Engine, count: int, timeout: float = 30.0) -> None:
    """Until `count` workers have registered with the queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            seen = conn.execute(sa.text("SELECT count(*) FROM procrastinate_workers")).scalar()
        if (seen or 0) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} workers registered in {timeout:g} s")
