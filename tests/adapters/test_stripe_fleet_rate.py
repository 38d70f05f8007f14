"""STRIPE_RATE_LIMIT holds for the fleet in queue mode: three processes calling Stripe at
once stay under it together, measured where the requests arrive.  Inline, each process
has its own limiter, and the same three together go well past it (the control: the
measure can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.conftest import SECRET, make_settings
from tests.support.stripe_servers import StripeShapeServer, busiest, subscription_json

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 10  # requests per second
CALLS = 20  # per process: three processes need 6 s at the limit
ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
pytestmark = pytest.mark.slow


# The server stamps a request when its handler thread runs, in this test's busy process:
# a stamp may come up to this much late, bunching arrivals that were spread.  A window this
# much shorter than a second keeps that out of the measure (never more than the limit).
STAMP_JITTER_S = 0.1


def _busiest_second(arrivals: list[float]) -> int:
    """The most requests that arrived within any second, less the stamps' jitter."""
    return busiest(arrivals, 1.0 - STAMP_JITTER_S)


def _fleet(db_url: str, tmp_path: Path, stripe: StripeShapeServer, mode: str) -> list[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "EXECUTION_MODE": mode,
           "STRIPE_SECRET_KEY": "sk_test_fleet", "STRIPE_API_BASE": stripe.url,
           "STRIPE_RATE_LIMIT": str(LIMIT), "STRIPE_CONCURRENCY": "4",
           "STRIPE_MAX_NETWORK_RETRIES": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.stripe_load", str(CALLS)],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    # All three begin at the same moment, however long each took to start.
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    return outputs


@ON_POSTGRESQL
def test_three_processes_stay_under_the_fleets_stripe_rate_together(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    stripe = StripeShapeServer()
    stripe.add(subscription_json("sub_load", customer="cus_load",
                                 prices=[("price_1", "prod_1", 900)],
                                 created=1_700_000_000, period_end=1_800_000_000))
    stripe.thread.start()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS ratelimit___stripe"))
        assert _fleet(db_url, tmp_path, stripe, "queue") == [str(CALLS)] * 3
        fleet = list(stripe.arrivals)
        took = max(fleet) - min(fleet)

        stripe.arrivals.clear()
        assert _fleet(db_url, tmp_path, stripe, "inline") == [str(CALLS)] * 3
        alone = list(stripe.arrivals)
    finally:
        stripe.server.shutdown()

    assert len(fleet) == len(alone) == 3 * CALLS
    # Together at most LIMIT in any second (less the stamps' jitter), and the 60 calls
    # took at least 5 s: on average at most LIMIT per second.
    assert _busiest_second(fleet) <= LIMIT, _busiest_second(fleet)
    assert took >= (3 * CALLS - LIMIT) / LIMIT, took
    # Each process limited on its own: three times the rate at once.
    assert _busiest_second(alone) > 2 * LIMIT, _busiest_second(alone)


@ON_POSTGRESQL
def test_the_fleets_limiter_outlives_each_gateway_of_a_worker(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """A worker reads one chunk after another, each with its own gateway: closing one
    leaves the process's share of the fleet's limiter working for the next."""
    from app.adapters.stripe_gateway import StripeGateway

    stripe = StripeShapeServer()
    stripe.add(subscription_json("sub_load", customer="cus_load",
                                 prices=[("price_1", "prod_1", 900)],
                                 created=1_700_000_000, period_end=1_800_000_000))
    stripe.thread.start()
    settings = make_settings(db_url, tmp_path, execution_mode="queue",
                             stripe_secret_key="sk_test_fleet", stripe_api_base=stripe.url,
                             stripe_rate_limit=LIMIT)
    try:
        for _chunk in range(3):
            with StripeGateway(settings) as gateway:
                assert gateway.retrieve_subscription("sub_load")["id"] == "sub_load"
    finally:
        stripe.server.shutdown()
    assert len(stripe.arrivals) == 3
