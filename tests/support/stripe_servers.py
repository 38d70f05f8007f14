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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from tests.support.servers import ROOT, SubprocessServer

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


# --- Stripe's current response shape, served as is ---------------------------------------
def price_json(price_id: str, product: str, unit_amount: int, *, created: int,
               livemode: bool = False) -> dict[str, Any]:
    """A recurring monthly price, as `GET /v1/prices/<id>` returns it."""
    return {
        "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit",
        "created": created, "currency": "eur", "custom_unit_amount": None,
        "livemode": livemode, "lookup_key": None, "metadata": {}, "nickname": None,
        "product": product,
        "recurring": {"interval": "month", "interval_count": 1, "meter": None,
                      "trial_period_days": None, "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring", "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def subscription_json(sub_id: str, *, customer: str, prices: list[tuple[str, str, int]],
                      created: int, period_end: int, status: str = "active",
                      cancel_at_period_end: bool = False, canceled_at: int | None = None,
                      ended_at: int | None = None, livemode: bool = False,
                      items_has_more: bool = False) -> dict[str, Any]:
    """A subscription as Stripe's API (2025-03-31 and later) returns it: one item per
    (price id, product id, unit amount), each with its own billing period and both its
    `price` and its legacy `plan`; no `current_period_*` on the subscription itself."""
    period_start = period_end - 30 * 86_400
    items = []
    for n, (price_id, product, amount) in enumerate(prices):
        price = price_json(price_id, product, amount, created=created - 86_400,
                           livemode=livemode)
        items.append({
            "id": f"si_{sub_id.removeprefix('sub_')}{n}", "object": "subscription_item",
            "billing_thresholds": None, "created": created,
            "current_period_end": period_end, "current_period_start": period_start,
            "discounts": [], "metadata": {},
            "plan": {
                "id": price_id, "object": "plan", "active": True, "amount": amount,
                "amount_decimal": str(amount), "billing_scheme": "per_unit",
                "created": created - 86_400, "currency": "eur", "interval": "month",
                "interval_count": 1, "livemode": livemode, "metadata": {}, "meter": None,
                "nickname": None, "product": product, "tiers_mode": None,
                "transform_usage": None, "trial_period_days": None,
                "usage_type": "licensed"},
            "price": price, "quantity": 1, "subscription": sub_id, "tax_rates": [],
        })
    return {
        "id": sub_id, "object": "subscription", "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": period_start, "billing_cycle_anchor_config": None,
        "billing_thresholds": None, "cancel_at": period_end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end, "canceled_at": canceled_at,
        "cancellation_details": {"comment": None, "feedback": None,
                                 "reason": "cancellation_requested" if canceled_at else None},
        "collection_method": "charge_automatically", "created": created, "currency": "eur",
        "customer": customer, "days_until_due": None,
        "default_payment_method": f"pm_{customer.removeprefix('cus_')}",
        "default_source": None, "default_tax_rates": [], "description": None,
        "discounts": [], "ended_at": ended_at,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": items, "has_more": items_has_more,
                  "total_count": len(items) + (10 if items_has_more else 0),
                  "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": f"in_{sub_id.removeprefix('sub_')}", "livemode": livemode,
        "metadata": {}, "next_pending_invoice_item_invoice": None, "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None,
        "pending_update": None, "schedule": None, "start_date": created, "status": status,
        "test_clock": None, "transfer_data": None, "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def not_found_json(sub_id: str, *, other_mode: str | None = None) -> dict[str, Any]:
    """Stripe's 404 for a subscription; `other_mode` ('live' or 'test'): the object
    exists in that mode and the key is of the other one."""
    message = f"No such subscription: '{sub_id}'"
    if other_mode is not None:
        used = "test" if other_mode == "live" else "live"
        message += (f"; a similar object exists in {other_mode} mode, but a {used} mode "
                    "key was used to make this request.")
    return {"error": {"code": "resource_missing",
                      "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
                      "message": message, "param": "id",
                      "request_log_url": "https://dashboard.stripe.com/test/logs/req_x",
                      "type": "invalid_request_error"}}


class StripeShapeServer:
    """Serves subscriptions exactly as given (Stripe's JSON), where localstripe cannot:
    several items with prices, a key of the wrong mode.  `GET /v1/subscriptions/<id>`
    answers the object, or Stripe's 404 (`other_mode[id]` names the mode it exists in);
    `GET /v1/subscriptions` lists the non-canceled ones, newest first, 100 per page.
    `errors[id]` answers that status instead (`api_error`); `on_retrieve(id)` runs before
    an answer (a webhook landing at that moment)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.other_mode: dict[str, str] = {}
        self.errors: dict[str, int] = {}  # id -> HTTP status of an api_error
        self.on_retrieve: Any = None
        self.requests: list[str] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.arrivals.append(time.monotonic())
                server.requests.append(self.path)
                path, _, query = self.path.partition("?")
                status, body = 404, {"error": {"type": "invalid_request_error",
                                               "message": "Unrecognized request URL"}}
                if path.startswith("/v1/subscriptions/"):
                    sub_id = path.rsplit("/", 1)[-1]
                    if server.on_retrieve is not None:
                        server.on_retrieve(sub_id)
                    if sub_id in server.errors:
                        status = server.errors[sub_id]
                        body = {"error": {"type": "api_error",
                                          "message": "An unknown error occurred"}}
                    elif sub_id in server.objects:
                        status, body = 200, server.objects[sub_id]
                    else:
                        body = not_found_json(sub_id, other_mode=server.other_mode.get(sub_id))
                elif path == "/v1/subscriptions":
                    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                    live = sorted((o for o in server.objects.values()
                                   if o["status"] != "canceled"),
                                  key=lambda o: (-o["created"], o["id"]))
                    after = params.get("starting_after")
                    if after:
                        ids = [o["id"] for o in live]
                        live = live[ids.index(after) + 1:] if after in ids else []
                    limit = int(params.get("limit", "10"))
                    status, body = 200, {"object": "list", "data": live[:limit],
                                         "has_more": len(live) > limit,
                                         "url": "/v1/subscriptions"}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("request-id", f"req_{len(server.requests)}")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def start(self) -> StripeShapeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stripe_shape() -> Iterator[StripeShapeServer]:
    server = StripeShapeServer().start()
    yield server
    server.stop()


def busiest(arrivals: list[float], window: float = 1.0) -> int:
    """The most requests that arrived within any `window` seconds (arrival times)."""
    times = sorted(arrivals)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
