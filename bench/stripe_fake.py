"""A minimal Stripe-compatible server for the sync benchmark: retrieve and list only.

localstripe builds every subscription through invoices and pickles its whole state after
each write, so 10,000 subscriptions take minutes to create; this answers the two reads
subscription-sync makes, in the current API shape (billing period on the item, prices),
from subscriptions generated on the fly, with a fixed added latency per call.

    python -m bench.stripe_fake --port 12111 --count 10000 --latency 0.02
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PERIOD_START = 1_795_000_000
PRICES = ("price_bench_premium", "price_bench_ai")


def subscription(n: int) -> dict[str, Any]:
    """Subscription number n (1-based); ids are sub_bench<n>, as bench.generate makes them."""
    return {
        "id": f"sub_bench{n}", "object": "subscription", "customer": f"cus_bench{n}",
        "status": "past_due" if n % 50 == 0 else "active",
        "cancel_at_period_end": n % 7 == 0, "canceled_at": None,
        "trial_start": None, "trial_end": None, "created": PERIOD_START - n,
        "items": {"object": "list", "data": [{
            "id": f"si_bench{n}", "object": "subscription_item",
            "price": {"id": PRICES[n % 2], "object": "price", "product": "prod_bench"},
            "current_period_start": PERIOD_START, "current_period_end": PERIOD_START + 2_592_000,
        }]},
    }


def serve(port: int, count: int, latency: float,
          arrivals: list[float] | None = None) -> ThreadingHTTPServer:
    """The server (not started); `arrivals` gets each request's time.monotonic()."""
    calls = {"n": 0}
    lock = threading.Lock()
    arrivals = arrivals if arrivals is not None else []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            arrived = time.monotonic()
            time.sleep(latency)
            with lock:
                calls["n"] += 1
                arrivals.append(arrived)
            url = urlsplit(self.path)
            status, body = 404, {"error": {"type": "invalid_request_error",
                                           "code": "resource_missing", "message": "No such"}}
            if url.path.startswith("/v1/subscriptions/"):
                number = url.path.rsplit("sub_bench", 1)[-1]
                if number.isdigit() and 1 <= int(number) <= count:
                    status, body = 200, subscription(int(number))
            elif url.path == "/v1/subscriptions":
                query = parse_qs(url.query)
                limit = min(100, int(query.get("limit", ["10"])[0]))
                after = query.get("starting_after", [""])[0].removeprefix("sub_bench")
                # Newest first, like Stripe: highest number first.
                top = int(after) - 1 if after.isdigit() else count
                numbers = range(top, max(0, top - limit), -1)
                status, body = 200, {"object": "list", "url": "/v1/subscriptions",
                                     "data": [subscription(n) for n in numbers],
                                     "has_more": top - limit > 0}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("request-id", f"req_{calls['n']}")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per call")
    args = parser.parse_args()
    serve(args.port, args.count, args.latency).serve_forever()


if __name__ == "__main__":
    main()
