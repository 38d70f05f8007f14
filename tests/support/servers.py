"""Real local servers for tests: SMTP sink (aiosmtpd), HTTP capture, uvicorn subprocess."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

import httpx
import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.sink.lock:
            self.sink.received.append(
                ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message)  # type: ignore[arg-type]
            )
        return "250 OK"


@dataclass
class SmtpSink:
    """An aiosmtpd server on a free port that keeps every message it receives."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    def start(self) -> SmtpSink:
        self.port = free_port()
        self.controller = Controller(_SinkHandler(self), hostname=self.host, port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    @property
    def settings(self) -> dict[str, Any]:
        """Overrides for `make_settings` that send mail here, in the clear."""
        return {"smtp_host": self.host, "smtp_port": self.port, "smtp_security": "none",
                "smtp_timeout": 10.0}

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [item.message for item in self.received]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@dataclass
class CapturedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpCapture:
    """A local HTTP server that records every request and answers `status`, or what
    `answer` decides for the request when set."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.answer: Callable[[CapturedRequest], int] | None = None
        self.requests: list[CapturedRequest] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = CapturedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                    body)
                capture.requests.append(request)
                self.send_response(capture.answer(request) if capture.answer
                                   else capture.status)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HttpCapture:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_capture() -> Iterator[HttpCapture]:
    server = HttpCapture().start()
    yield server
    server.stop()


class SubprocessServer:
    """A server in a subprocess on a free port, ready once an HTTP GET of `probe` answers.

    Subclasses give the command line (`argv`); `start` fails fast with the exit code if the
    process dies before it answers.
    """

    name = "server"
    probe = "/"
    probe_headers: ClassVar[dict[str, str]] = {}
    start_timeout = 30.0
    # Only for a quiet server: nobody reads the pipe while it runs, so a chatty one (moto
    # logs every request) would fill it and block.
    capture_output = False

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None,
                 cwd: Path | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.captured = ""  # what a capture_output server printed, once stopped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Self:
        self.proc = subprocess.Popen(
            self.argv(), env=self.env, cwd=self.cwd,
            stdout=subprocess.PIPE if self.capture_output else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.capture_output else subprocess.DEVNULL,
        )
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}"
                                   + (f":\n{out}" if self.capture_output else ""))
            try:
                httpx.get(self.url + self.probe, headers=self.probe_headers, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in time")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            if not self.proc.stdout.closed:
                self.captured += self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()


class UvicornProcess(SubprocessServer):
    """`python -m uvicorn app.main:app` in a subprocess, configured by environment.

    Plain uvicorn, with its defaults (proxy headers on, trusting 127.0.0.1).  The subclasses
    start the same app the other supported ways.  A `log_level` of info or lower turns the
    access log on; anything printed is in `captured` once the server stopped.
    """

    name = "uvicorn"
    capture_output = True

    def __init__(self, env: dict[str, str], port: int | None = None, cwd: Path = ROOT,
                 log_level: str = "warning") -> None:
        super().__init__(env, port, cwd)
        self.log_level = log_level

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", self.log_level]


class ServeProcess(UvicornProcess):
    """`voyagesmart-cron serve` (as `python -m app serve`)."""

    name = "voyagesmart-cron serve"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", self.log_level]


class FastapiRunProcess(UvicornProcess):
    """`fastapi run app/main.py` (the FastAPI CLI, uvicorn underneath, its own logging)."""

    name = "fastapi run"

    def argv(self) -> list[str]:
        fastapi = Path(sys.executable).parent / "fastapi"
        return [str(fastapi), "run", str(ROOT / "app" / "main.py"), "--host", "127.0.0.1",
                "--port", str(self.port)]


class VercelRuntimeProcess(UvicornProcess):
    """The app served the way Vercel's Python runtime serves an ASGI entrypoint
    (tests/support/vercel_runtime.py: app/index.py loaded from its file, uvicorn on a bound socket
    with default proxy headers, no access log)."""

    name = "vercel runtime"

    def __init__(self, env: dict[str, str], port: int | None = None, cwd: Path = ROOT,
                 log_level: str = "warning") -> None:
        super().__init__({"VERCEL": "1", **env}, port, cwd, log_level)

    def argv(self) -> list[str]:
        runtime = ROOT / "tests" / "support" / "vercel_runtime.py"
        return [sys.executable, str(runtime), str(self.port)]


# Every supported way to start the app, by name (tests parametrize over these).
WAYS_TO_SERVE: dict[str, type[UvicornProcess]] = {
    "serve": ServeProcess,
    "uvicorn": UvicornProcess,
    "fastapi-run": FastapiRunProcess,
    "vercel": VercelRuntimeProcess,
}
