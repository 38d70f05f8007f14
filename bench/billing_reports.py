"""analytics and subscription-report at scale on PostgreSQL, against hand-written SQL.

    .venv/bin/python -m bench.billing_reports            # 100k users, 300k trips, 100k subs
    .venv/bin/python -m bench.billing_reports --keep     # leave vsc_bench_billing behind

1. Fill `vsc_bench_billing` with bench.generate: 100,000 users, one subscription each
   (premium / ai / free; active, trialing, past_due, canceled), 2 history events per user,
   300,000 trips with 3 participants, 1 media and 1 document each; VACUUM ANALYZE.
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

_STARTED = "status NOT IN ('incomplete', 'incomplete_expired')"
_ENDED = ("CASE WHEN status IN ('canceled', 'incomplete_expired') "
          "THEN coalesce(canceled_at, updated_at) END")
_RANK = "CASE tier WHEN 'free' THEN 0 WHEN 'premium' THEN 1 WHEN 'ai' THEN 2 END"

ANALYTICS_SQL = [
    """SELECT (SELECT count(*) FROM users WHERE last_login >= %(ws)s AND last_login < %(we)s),
              (SELECT count(*) FROM users WHERE created_at >= %(ws)s AND created_at < %(we)s),
              (SELECT count(*) FROM trips WHERE created_at >= %(ws)s AND created_at < %(we)s),
              (SELECT count(*) FROM trips WHERE start_date >= %(ds)s AND start_date < %(de)s),
              (SELECT count(*) FROM trips t
                 JOIN (SELECT trip_id FROM trip_participants
                       WHERE invitation_status = 'accepted'
                       GROUP BY trip_id HAVING count(*) > 1) g ON g.trip_id = t.id
                WHERE t.start_date < %(de)s AND coalesce(t.end_date, t.start_date) >= %(ds)s)""",
    f"""SELECT tier,
              count(*) FILTER (WHERE created_at >= %(ws)s AND {_STARTED}),
              count(*) FILTER (WHERE {_STARTED} AND ended >= %(ws)s AND ended < %(we)s),
              count(*) FILTER (WHERE created_at < %(ws)s AND {_STARTED}
                                 AND (ended IS NULL OR ended >= %(ws)s))
       FROM (SELECT *, {_ENDED} AS ended FROM subscriptions
             WHERE tier IN ('premium', 'ai') AND created_at < %(we)s) s
       GROUP BY tier""",
    f"""SELECT count(*) FILTER (WHERE r > p), count(*) FILTER (WHERE r < p)
       FROM (SELECT event_timestamp, r,
                    lag(r) OVER (PARTITION BY user_id ORDER BY event_timestamp, created_at) p
             FROM (SELECT *, {_RANK} AS r FROM subscription_history
                   WHERE event_timestamp < %(we)s AND user_id IS NOT NULL
                     AND (status IS NULL OR status NOT IN ('canceled', 'incomplete_expired'))
                  ) h
             WHERE r IS NOT NULL) x
       WHERE event_timestamp >= %(ws)s""",
    f"""SELECT count(*), count(*) FILTER (WHERE EXISTS (
              SELECT 1 FROM subscriptions s WHERE s.user_id = u.id
                 AND s.tier IN ('premium', 'ai') AND s.created_at >= %(ws)s
                 AND s.created_at < %(we)s AND s.{_STARTED}))
       FROM users u
       WHERE u.created_at < %(we)s AND NOT EXISTS (
              SELECT 1 FROM subscriptions s WHERE s.user_id = u.id
                 AND s.tier IN ('premium', 'ai') AND s.created_at < %(ws)s AND s.{_STARTED}
                 AND ({_ENDED.replace('status', 's.status')} IS NULL
                      OR {_ENDED.replace('status', 's.status')} >= %(ws)s))""",
    f"""WITH owner_tier AS (
         SELECT user_id, max({_RANK}) AS r FROM subscriptions
         WHERE tier IN ('premium', 'ai') AND created_at < %(we)s AND {_STARTED}
           AND ({_ENDED} IS NULL OR {_ENDED} >= %(we)s)
         GROUP BY user_id),
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

_TRIAL = ("(trial_end IS NOT NULL AND trial_end > {t} AND coalesce(trial_start, created_at)"
          " <= {t}) OR (status = 'trialing' AND trial_end IS NULL)")
_LIVE = f"created_at < {{t}} AND {_STARTED} AND ({_ENDED} IS NULL OR {_ENDED} >= {{t}})"


def _month_sql() -> str:
    live_end, trial_end = _LIVE.format(t="%(end)s"), _TRIAL.format(t="%(end)s")
    late = "status IN ('past_due', 'unpaid')"
    return f"""
        SELECT tier,
          count(*) FILTER (WHERE ({live_end}) AND NOT ({trial_end}) AND NOT {late}),
          count(*) FILTER (WHERE ({live_end}) AND ({trial_end})),
          count(*) FILTER (WHERE ({live_end}) AND NOT ({trial_end}) AND {late}),
          count(*) FILTER (WHERE created_at >= %(start)s AND {_STARTED}),
          count(*) FILTER (WHERE {_STARTED} AND {_ENDED} >= %(start)s
                             AND {_ENDED} < %(end)s),
          count(*) FILTER (WHERE {_LIVE.format(t="%(start)s")})
        FROM subscriptions WHERE tier IN ('premium', 'ai') AND created_at < %(end)s
        GROUP BY tier"""


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
    from app.db import make_engine
    from app.jobs.analytics import compute_week
    from app.jobs.subscription_report import build_report
    from app.runner import Runner

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

            week = {"ws": WEEK_START, "we": WEEK_START + dt.timedelta(days=7),
                    "ds": WEEK_START.date(), "de": WEEK_START.date() + dt.timedelta(days=7)}
            analytics_sql = [(sql, week) for sql in ANALYTICS_SQL]
            months = [{"start": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                       "end": dt.datetime(2026, 12, 1, tzinfo=dt.UTC)},
                      {"start": dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
                       "end": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}]
            report_sql = [(_month_sql(), m) for m in months]
            def figures(task: str) -> Callable[[], None]:
                def go() -> None:
                    with engine.connect() as conn:
                        if task == "analytics":
                            compute_week(conn, WEEK_START.date())
                        else:
                            build_report(conn, dt.date(2026, 11, 1), settings)
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
