"""One process of a fleet calling Stripe: `python -m tests.support.stripe_load N`.

Reads its settings from the environment as the service does (DATABASE_URL,
EXECUTION_MODE, STRIPE_RATE_LIMIT, STRIPE_API_BASE, ...), then retrieves the subscription
`sub_load` N times, once told to go (a line on stdin, after it printed `ready`), from
`STRIPE_CONCURRENCY` threads through the service's own gateway:
what the read chunks of subscription-sync do, in as many processes as a test starts."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from app.adapters.stripe_gateway import StripeGateway
from app.config import Settings


def main() -> int:
    calls = int(sys.argv[1])
    settings = Settings()  # type: ignore[call-arg]
    with StripeGateway(settings) as gateway, ThreadPoolExecutor(
            settings.stripe_concurrency) as pool:
        # The fleet starts together: ready, then wait for the test's go on stdin.
        print("ready", flush=True)
        sys.stdin.readline()
        list(pool.map(lambda _n: gateway.retrieve_subscription("sub_load"), range(calls)))
        print(gateway.requests, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
