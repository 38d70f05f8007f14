"""analytics and subscription-report at scale on PostgreSQL, against hand-written SQL.

    .venv/bin/python -m bench.billing_reports            # 100k users, 300k trips, 100k subs
    .venv/bin/python -m bench.billing_reports --keep     # leave vsc_bench_billing behind

1. Fill `vsc_bench_billing` with bench.generate: 100,000 users (each with the sign-up
   trigger's row in `user_subscriptions`), a Stripe subscription on each (premium / ai;
   active or inactive), 2 history events per user, 300,000 trips with 3 participants, 1
   media and 1 document each; VACUUM ANALYZE.
2. Time each job through the real runner (run log, lease, upsert, report row, CSV and
   email to the outbox included), its queries alone (the job's compute function), and the
   same figures as plain SQL written by hand (psycopg, no ORM, one open connection as the
   job's pool has); medians of 5 interleaved rounds (a burst of load from a neighbour on a
   shared machine then hits all three sides alike), and
   the ratios to the hand-written SQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.generate import (
    analyze,
    create_database,
    documents,
    drop_database,
    subscription_history,
    subscriptions,
    trip_media,
    trip_participants,
    trips,
    users,
)

NOW = dt.datetime(2026, 12, 1, 4, 0, 30, tzinfo=dt.UTC)  # the report's slot; a Tuesday
WEEK_START = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)  # the last complete ISO week

_PAID_TIERS = "('premium', 'ai')"
_RANK = "CASE tier WHEN 'free' THEN 0 WHEN 'premium' THEN 1 WHEN 'ai' THEN 2 END"
# Paid now: a Stripe subscription, a paid tier, active, and not past a canceled period.
_PAID_NOW = f"""SELECT tier, count(*) FROM user_subscriptions
    WHERE stripe_subscription_id IS NOT NULL AND tier IN {_PAID_TIERS} AND status = 'active'
      AND NOT (cancel_at_period_end IS TRUE AND current_period_end IS NOT NULL
               AND current_period_end <= %(now)s)
    GROUP BY tier"""
# Every start, end and tier move of every Stripe subscription, its history in order; an
# end canceled at period end dated at the later of the request and the period end.
_TRANSITIONS = f"""WITH events AS (
      SELECT stripe_subscription_id AS sid, user_id, event_type, tier,
             event_timestamp AS at, created_at, id,
             CASE WHEN event_type IN ('subscription_deleted', 'subscription_expired')
                       OR status IN ('inactive', 'canceled', 'paused', 'incomplete',
                                     'incomplete_expired', 'unpaid')
                       OR tier = 'free' THEN 0
                  WHEN tier IN {_PAID_TIERS}
                       AND (status IS NULL OR status IN ('active', 'trialing', 'past_due'))
                  THEN 1 END AS paying,
             max(event_timestamp) FILTER (WHERE event_type = 'subscription_canceled')
               OVER (PARTITION BY stripe_subscription_id
                     ORDER BY event_timestamp, created_at, id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS canceled_at
      FROM subscription_history WHERE stripe_subscription_id IS NOT NULL),
    steps AS (
      SELECT *, lag(paying) OVER w AS before, lag(tier) OVER w AS tier_before
      FROM events WHERE paying IS NOT NULL
      WINDOW w AS (PARTITION BY sid ORDER BY at, created_at, id)),
    periods AS (
      SELECT stripe_subscription_id AS sid, max(current_period_end) AS pe
      FROM user_subscriptions WHERE stripe_subscription_id IS NOT NULL GROUP BY 1),
    t AS (
      SELECT 'start' AS kind, tier, at, user_id FROM steps
       WHERE paying = 1 AND (before IS NULL OR before = 0)
      UNION ALL
      SELECT 'end', s.tier_before,
             CASE WHEN p.pe IS NOT NULL AND p.pe < s.at
                       AND (s.canceled_at IS NOT NULL OR s.event_type = 'subscription_expired')
                  THEN GREATEST(s.canceled_at, p.pe) ELSE s.at END, s.user_id
        FROM steps s LEFT JOIN periods p ON p.sid = s.sid
       WHERE s.paying = 0 AND s.before = 1
      UNION ALL
      SELECT 'enter', tier, at, user_id FROM steps
       WHERE paying = 1 AND before = 1 AND tier <> tier_before
      UNION ALL
      SELECT 'leave', tier_before, at, user_id FROM steps
       WHERE paying = 1 AND before = 1 AND tier <> tier_before
      UNION ALL
      SELECT 'end', u.tier,
             GREATEST((SELECT max(h.event_timestamp) FROM subscription_history h
                       WHERE h.stripe_subscription_id = u.stripe_subscription_id
                         AND h.event_type = 'subscription_canceled'),
                      u.current_period_end), u.user_id
        FROM user_subscriptions u
       WHERE u.stripe_subscription_id IS NOT NULL AND u.tier IN {_PAID_TIERS}
         AND u.status = 'active' AND u.cancel_at_period_end IS TRUE
         AND u.current_period_end <= %(now)s)"""
_GRANTS = f"""SELECT CASE WHEN EXISTS (SELECT 1 FROM promo_code_redemptions r
                                     WHERE r.user_id = s.user_id)
                        OR EXISTS (SELECT 1 FROM subscription_history h
                                   WHERE h.user_id = s.user_id
                                     AND h.event_type = 'promo_code_redemption')
                   THEN 'promo_code' ELSE 'sign_up' END AS source, tier, count(*)
    FROM user_subscriptions s
    WHERE stripe_subscription_id IS NULL AND tier IN {_PAID_TIERS} AND status = 'active'
    GROUP BY 1, 2"""

ANALYTICS_SQL = [
    """SELECT (SELECT count(*) FROM users u
                WHERE coalesce((SELECT a.last_sign_in_at FROM auth.users a WHERE a.id = u.id),
                               u.last_login, u.created_at) >= %(ws)s
                  AND coalesce((SELECT a.last_sign_in_at FROM auth.users a WHERE a.id = u.id),
                               u.last_login, u.created_at) < %(we)s),
              (SELECT count(*) FROM users WHERE created_at >= %(ws)s AND created_at < %(we)s),
              (SELECT count(*) FROM trips WHERE created_at >= %(ws)s AND created_at < %(we)s),
              (SELECT count(*) FROM trips WHERE start_date >= %(ds)s AND start_date < %(de)s),
              (SELECT count(*) FROM trips t
                 JOIN (SELECT trip_id FROM trip_participants
                       WHERE invitation_status = 'accepted'
                       GROUP BY trip_id HAVING count(*) > 1) g ON g.trip_id = t.id
                WHERE t.start_date < %(de)s AND coalesce(t.end_date, t.start_date) >= %(ds)s)""",
    _PAID_NOW,
    _TRANSITIONS + """
    SELECT kind, tier, count(*) FILTER (WHERE at >= %(ws)s), count(*) FILTER (WHERE at >= %(we)s),
           NULL FROM t GROUP BY kind, tier
    UNION ALL
    SELECT 'users', NULL, 0, 0,
           count(DISTINCT user_id) FILTER (WHERE kind = 'start' AND at >= %(ws)s AND at < %(we)s)
    FROM t""",
    _GRANTS,
    f"""SELECT count(*) FILTER (WHERE r > p), count(*) FILTER (WHERE r < p)
       FROM (SELECT event_timestamp, r,
                    lag(r) OVER (PARTITION BY user_id ORDER BY event_timestamp, created_at) p
             FROM (SELECT *, {_RANK} AS r FROM subscription_history
                   WHERE event_timestamp < %(we)s AND stripe_subscription_id IS NOT NULL
                     AND (status IS NULL OR status = 'active')) h
             WHERE r IS NOT NULL) x
       WHERE event_timestamp >= %(ws)s""",
    "SELECT count(*) FROM users WHERE created_at < %(we)s",
    f"""WITH owner_tier AS (
         SELECT user_id, max({_RANK}) AS r FROM user_subscriptions
         WHERE tier IN {_PAID_TIERS} AND status = 'active' GROUP BY user_id),
       t AS (SELECT trips.id, trips.created_at, coalesce(o.r, 0) AS r FROM trips
             LEFT JOIN owner_tier o ON o.user_id = trips.owner_id)
       SELECT 'trips', r, count(*) FROM t WHERE created_at >= %(ws)s AND created_at < %(we)s
        GROUP BY r
       UNION ALL
       SELECT 'participants', t.r, count(*) FROM trip_participants p JOIN t ON t.id = p.trip_id
        WHERE p.created_at >= %(ws)s AND p.created_at < %(we)s GROUP BY t.r
       UNION ALL
       SELECT 'media', t.r, count(*) FROM trip_media m JOIN t ON t.id = m.trip_id
        WHERE m.created_at >= %(ws)s AND m.created_at < %(we)s GROUP BY t.r
       UNION ALL
       SELECT 'documents', t.r, count(*) FROM documents d JOIN t ON t.id = d.trip_id
        WHERE d.created_at >= %(ws)s AND d.created_at < %(we)s GROUP BY t.r""",
]
# The report's figures for two months: today's paid subscriptions, the transitions since
# each month boundary (three boundaries), the plan prices, the grants.
_M = ("%(m0)s", "%(m1)s", "%(m2)s")
REPORT_SQL = [
    _PAID_NOW,
    _TRANSITIONS + f"""
    SELECT kind, tier, {", ".join(f"count(*) FILTER (WHERE at >= {m})" for m in _M)}
    FROM t GROUP BY kind, tier""",
    f"SELECT tier, price, currency, interval FROM subscriptions WHERE tier IN {_PAID_TIERS}",
    _GRANTS,
    # The stored reports of the month and the one before (the corrections).
    "SELECT month, data, sent_at FROM cron_monthly_report WHERE month IN ('2026-11', '2026-10')",
]


def _fill(url: str, scale: dict[str, int]) -> None:
    from app.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        users(conn, scale["users"], now=NOW)
        subscriptions(conn, scale["users"], now=NOW,
                      fraction=scale["subscriptions"] / scale["users"])
        subscription_history(conn, scale["users"], 2, now=NOW)
        trips(conn, scale["trips"], scale["users"], now=NOW)
        trip_participants(conn, scale["trips"], scale["users"], 3, now=NOW)
        trip_media(conn, scale["trips"], 1, scale["users"], now=NOW)
        documents(conn, scale["trips"], 1, scale["users"], now=NOW)
    engine.dispose()
    analyze(url)


def _hand(conn: psycopg.Connection[Any],
          statements: list[tuple[str, dict[str, object]]]) -> Callable[[], None]:
    def go() -> None:
        for sql, params in statements:
            conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        conn.commit()
    return go


def _medians(sides: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Each round runs every side once, in an order that alternates between rounds."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(rounds):
        order = list(sides.items())
        for name, func in order if index % 2 == 0 else reversed(order):
            started = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="analytics / subscription-report benchmark")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--trips", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    from app.config import Settings
    from app.core.runner import Runner
    from app.db import make_engine
    from app.jobs.analytics import compute_week
    from app.jobs.subscription_report import build_report

    name = "vsc_bench_billing"
    url = create_database(name)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        started = time.perf_counter()
        _fill(url, {"users": args.users, "subscriptions": args.subscriptions,
                    "trips": args.trips})
        print(f"generated {args.users} users, {args.subscriptions} subscriptions, "
              f"{args.trips} trips (+{3 * args.trips} participants, {args.trips} media, "
              f"{args.trips} documents, {2 * args.users} history events) in "
              f"{time.perf_counter() - started:.1f} s")
        with tempfile.TemporaryDirectory() as data_dir, psycopg.connect(dsn) as hand_conn:
            settings = Settings(_env_file=None, app_env="development",  # type: ignore[call-arg]
                                database_url=url, data_dir=Path(data_dir),
                                admin_emails="admin@example.com")
            engine = make_engine(url)
            runner = Runner(settings, engine, clock=lambda: NOW)

            def job(task: str) -> Callable[[], None]:
                def go() -> None:
                    outcome = runner.run(task, trigger="cli", force=True)
                    assert outcome.status == "success", outcome.message
                return go

            week = {"ws": WEEK_START, "we": WEEK_START + dt.timedelta(days=7), "now": NOW,
                    "ds": WEEK_START.date(), "de": WEEK_START.date() + dt.timedelta(days=7)}
            analytics_sql = [(sql, week) for sql in ANALYTICS_SQL]
            months: dict[str, object] = {f"m{i}": dt.datetime(2026, m, 1, tzinfo=dt.UTC)
                                         for i, m in enumerate((10, 11, 12))}
            months["now"] = NOW
            report_sql = [(sql, months) for sql in REPORT_SQL]
            def figures(task: str) -> Callable[[], None]:
                def go() -> None:
                    with engine.connect() as conn:
                        if task == "analytics":
                            compute_week(conn, WEEK_START.date(), NOW)
                        else:
                            build_report(conn, dt.date(2026, 11, 1), NOW)
                return go

            for task, statements in (("analytics", analytics_sql),
                                     ("subscription-report", report_sql)):
                job(task)()  # warm caches and the plan cache on both sides
                _hand(hand_conn, statements)()
                medians = _medians({"ours": job(task), "sql_only": figures(task),
                                    "hand": _hand(hand_conn, statements)}, args.rounds)
                ours, sql_only, hand = medians["ours"], medians["sql_only"], medians["hand"]
                print(f"{task:>20}: whole run {ours:6.3f} s (ratio {ours / hand:4.2f})  "
                      f"its queries {sql_only:6.3f} s (ratio {sql_only / hand:4.2f})  "
                      f"hand-written SQL {hand:6.3f} s   [limits: 10 s, 1.5x]")
            engine.dispose()
    finally:
        if not args.keep:
            drop_database(name)


if __name__ == "__main__":
    main()
