"""A real fake Stripe for tests: `localstripe` in a subprocess, and a fault proxy before it.

localstripe is stateful (customers, products, plans, subscriptions, cancellation) but
cannot answer 429, 500 or hang; the proxy forwards every request to it and injects those
faults on the requests a test names, so the SDK is exercised end to end, never patched.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from tests.servers import ROOT, SubprocessServer

_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class LocalStripe(SubprocessServer):
    name = "localstripe"
    probe = "/v1/plans"
    probe_headers: ClassVar[dict[str, str]] = {"Authorization": "Bearer sk_test_ready"}
    start_timeout = 20.0

    def __init__(self) -> None:
        super().__init__(cwd=ROOT)

    def argv(self) -> list[str]:
        # --from-scratch: localstripe otherwise reloads the state every instance on the
        # machine dumps to one shared pickle file, and dies on a torn one.
        return [sys.executable, "-m", "localstripe", "--port", str(self.port),
                "--from-scratch"]


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: int | None = None  # answer this status instead of forwarding
    delay: float = 0.0  # hang this long before forwarding (the client times out first)
    times: int | None = None  # None: every matching request
    retry_after: str | None = None


class FaultProxy:
    """Forwards to `upstream`; requests matching a fault get it instead."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(base_url=upstream, timeout=30.0)
        # Set by stop(): a handler still waiting out a delay gives up instead of forwarding
        # through a closed client (which would print a traceback after the test).
        self.stopping = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._match(self.command, self.path)
                if fault is not None and fault.delay and proxy.stopping.wait(fault.delay):
                    return
                if fault is not None and fault.status is not None:
                    kind = "rate_limit_error" if fault.status == 429 else "api_error"
                    payload = json.dumps({"error": {
                        "type": kind, "message": f"injected {fault.status}"}}).encode()
                    headers = {"content-type": "application/json"}
                    if fault.retry_after is not None:
                        headers["retry-after"] = fault.retry_after
                    self._reply(fault.status, headers, payload)
                    return
                try:
                    upstream = proxy.client.request(
                        self.command, self.path, content=body,
                        headers={k: v for k, v in self.headers.items()
                                 if k.lower() not in _HOP_HEADERS})
                except (RuntimeError, httpx.HTTPError):
                    if proxy.stopping.is_set():
                        return  # stop() closed the client under this request
                    raise
                self._reply(upstream.status_code,
                            {"content-type": upstream.headers.get("content-type",
                                                                  "application/json")},
                            upstream.content)

            def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Not joined on close: a handler may sit on a keep-alive connection an SDK thread
        # never closed.  Once stopping, a handler gives up instead of failing loudly.
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def inject(self, path_regex: str, *, status: int | None = None, delay: float = 0.0,
               times: int | None = None, retry_after: str | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(re.compile(path_regex), status, delay, times,
                                     retry_after))

    def _match(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.pattern.search(path) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def count(self, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        with self.lock:
            return sum(1 for _, path in self.requests if pattern.search(path))

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe().start()
    yield server
    server.stop()


@pytest.fixture
def stripe_proxy(localstripe: LocalStripe) -> Iterator[FaultProxy]:
    proxy = FaultProxy(localstripe.url).start()
    yield proxy
    proxy.stop()
