"""subscription-sync of 10,000 subscriptions at 100 requests/s, 20 ms added per call.

    .venv/bin/python -m bench.subscription_sync                   # both strategies
    .venv/bin/python -m bench.subscription_sync --strategy list   # only the paging one

1. Fill `vsc_bench_sync_tpl` (PostgreSQL) with N subscriptions `sub_bench<n>`; in Stripe
   every 50th is past_due (`active` in the values the CHECK admits, so no change) and
   every 7th is set to cancel at period end, locally none is.
2. Start `bench.stripe_fake` (retrieve + list, 20 ms per call) in a subprocess.
3. For each strategy, copy the template and run the real runner in a child process
   (`STRIPE_RATE_LIMIT=100`), reading its wall time, API calls, peak RSS and the changes.
4. Print them against the bound: N / rate seconds (100 s for 10,000) x 1.2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa

from bench.generate import create_database, drop_database, pg_url
from bench.stripe_fake import PERIOD_START

RATE = 100.0


def _fill(url: str, n: int) -> None:
    """N users as the app makes them (sign-up, the trigger's row), each then paying through
    Stripe (`sub_bench<n>`), as the webhook writes it."""
    from app.db import make_engine

    start = dt.datetime.fromtimestamp(PERIOD_START, dt.UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO auth.users (id, email, created_at, last_sign_in_at)
            SELECT md5('user' || g)::uuid, 'user' || g || '@bench.voyagesmart.app',
                   :start - interval '100 days', :start - interval '1 day'
            FROM generate_series(1, CAST(:n AS int)) AS g
        """), {"n": n, "start": start})
        conn.execute(sa.text("""
            UPDATE user_subscriptions s SET stripe_subscription_id = 'sub_bench' || g,
                   stripe_customer_id = 'cus_bench' || g,
                   tier = CASE WHEN g % 2 = 0 THEN 'premium' ELSE 'ai' END,
                   status = 'active', current_period_end = :start + interval '30 days',
                   cancel_at_period_end = false, created_at = :start - interval '100 days',
                   updated_at = :start - interval '1 day'
            FROM generate_series(1, CAST(:n AS int)) AS g
            WHERE s.user_id = md5('user' || g)::uuid
        """), {"n": n, "start": start})
    engine.dispose()


def _child(url: str, api: str, strategy: str) -> None:
    from app.config import Settings
    from app.core.runner import Runner
    from app.db import make_engine

    settings = Settings(
        _env_file=None, app_env="development", database_url=url,  # type: ignore[call-arg]
        stripe_secret_key="sk_test_bench", stripe_api_base=api, stripe_rate_limit=RATE,
        stripe_tier_map="price_bench_premium:premium,price_bench_ai:ai",
        stripe_sync_strategy=strategy, stripe_concurrency=8)
    engine = make_engine(url)
    started = time.monotonic()
    outcome = Runner(settings, engine).run("subscription-sync", trigger="cli")
    wall = time.monotonic() - started
    print(json.dumps({
        "status": outcome.status, "wall_s": round(wall, 2), "message": outcome.message,
        "api_calls": outcome.details.get("api_calls"),
        "changed_by_field": outcome.details.get("changed_by_field"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description="subscription-sync benchmark")
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--strategy", choices=["list", "retrieve", "both"], default="both")
    parser.add_argument("--child", nargs=3, metavar=("URL", "API", "STRATEGY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    from tests.support.servers import free_port

    n = args.subscriptions
    template = "vsc_bench_sync_tpl"
    create_database(template)
    _fill(pg_url(template), n)
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "bench.stripe_fake", "--port", str(port),
                             "--count", str(n), "--latency", str(args.latency)])
    time.sleep(1.0)
    results: dict[str, Any] = {}
    strategies = ["list", "retrieve"] if args.strategy == "both" else [args.strategy]
    try:
        for strategy in strategies:
            name = f"vsc_bench_sync_{strategy}"
            url = create_database(name, template=template)
            try:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.subscription_sync", "--child", url,
                     f"http://127.0.0.1:{port}", strategy],
                    check=True, capture_output=True, text=True)
                results[strategy] = json.loads(out.stdout.strip().splitlines()[-1])
            finally:
                drop_database(name)
    finally:
        fake.terminate()
        fake.wait(10)
        drop_database(template)

    bound = n / RATE
    print(f"subscriptions: {n}, rate limit {RATE:.0f} req/s, added latency "
          f"{args.latency * 1000:.0f} ms/call; N/rate = {bound:.1f} s, bound x1.2 = "
          f"{bound * 1.2:.1f} s")
    for strategy, r in results.items():
        print(f"{strategy:>8}: {r['wall_s']:7.2f} s  ratio to N/rate {r['wall_s'] / bound:5.3f}  "
              f"API calls {r['api_calls']}  peak RSS {r['peak_rss_mb']} MB  status "
              f"{r['status']}  changed {r['changed_by_field']}")


if __name__ == "__main__":
    main()
