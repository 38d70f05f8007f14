"""db-maintenance on a large PostgreSQL database: time per step, against the blunt way.

Fills `vsc_bench_maint` with VoyageSmart data (bench/generate.py) up to about --gb
gigabytes, then makes the work a weekly run finds after a bulk cleanup: 60% of
`trip_media` and 20% of `subscription_history` deleted, 10% of `trips` updated (dead
tuples, bloated indexes), and an invalid `_ccnew` index left by a failed concurrent
reindex.  Two file-level copies of that database are then maintained:

- `job`: the real job through the runner (targeted VACUUM (ANALYZE), REINDEX INDEX
  CONCURRENTLY of what is bloated or invalid);
- `baseline`: `VACUUM (ANALYZE)` of the whole database then a plain `REINDEX DATABASE`.

    .venv/bin/python -m bench.db_maintenance --gb 1      # what was measured
    .venv/bin/python -m bench.db_maintenance --gb 5      # the size the issue names
    .venv/bin/python -m bench.db_maintenance --gb 1 --chunked   # and whole vs 30 s calls

With `--chunked`, a third copy `cut` gets the same work and the job under
FUNCTION_MAX_DURATION=30 (`--budget`), called again until it is no longer `partial` (as a
crontab loop would); printed: its calls, the total wall time against the whole run on the
`job` copy (target 1.15x at most), and whether both copies end alike (each table's dead
tuples, each index's validity, the run's report of tables and indexes).

Every database it creates is dropped at the end (--keep keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import time
from typing import Any

import psycopg

from app.config import Settings
from app.core.runner import Runner
from app.db import make_engine
from bench.generate import (
    create_database,
    documents,
    drop_database,
    expenses,
    pg_url,
    subscription_history,
    trip_media,
    trip_participants,
    trips,
    users,
)

BASE = "vsc_bench_maint"
# Rows per unit of scale; one unit is roughly 0.5 GB with indexes.
UNIT = {"users": 200_000, "history_per_user": 5, "trips": 100_000, "media_per_trip": 10}


def _fill(url: str, scale: float, now: dt.datetime) -> None:
    users_n = int(UNIT["users"] * scale)
    trips_n = int(UNIT["trips"] * scale)
    engine = make_engine(url)
    for fill in (
        lambda c: users(c, users_n, now=now),
        lambda c: subscription_history(c, users_n, UNIT["history_per_user"], now=now),
        lambda c: trips(c, trips_n, users_n, now=now),
        lambda c: trip_participants(c, trips_n, users_n, 4, now=now),
        lambda c: trip_media(c, trips_n, UNIT["media_per_trip"], users_n, now=now),
        lambda c: documents(c, trips_n, 2, users_n, now=now),
        lambda c: expenses(c, trips_n, 5, users_n, now=now),
    ):
        with engine.begin() as conn:  # one transaction per table: bounded WAL per commit
            fill(conn)
    engine.dispose()


def _dsn(name: str) -> str:
    return pg_url(name).replace("postgresql+psycopg://", "postgresql://")


def _size(name: str) -> int:
    with psycopg.connect(_dsn(name)) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def _make_work(name: str) -> None:
    with psycopg.connect(_dsn(name), autocommit=True) as conn:
        for table in ("trip_media", "subscription_history", "trips"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.execute("DELETE FROM trip_media WHERE (hashtext(id::text) & 1023) < 614")
        conn.execute("DELETE FROM subscription_history WHERE (hashtext(id::text) & 1023) < 205")
        conn.execute("UPDATE trips SET updated_at = now() WHERE (hashtext(id::text) & 1023) < 102")
        conn.execute("INSERT INTO trip_participants (id, trip_id, role, invitation_status, "
                     "created_at) SELECT gen_random_uuid(), trip_id, 'x', 'pending', now() "
                     "FROM trip_participants LIMIT 3")
        # Fails on the duplicates just inserted, leaving the invalid index behind.
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_trip_participants_trip_id_ccnew "
                         "ON trip_participants (trip_id)")
        conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(2)


def _run_job(name: str) -> dict[str, Any]:
    url = pg_url(name)
    engine = make_engine(url)
    settings = Settings(_env_file=None, app_env="test", database_url=url,  # type: ignore[call-arg]
                        maintenance_statement_timeout=3600)
    started = time.monotonic()
    outcome = Runner(settings, engine).run("db-maintenance", trigger="cli")
    total = time.monotonic() - started
    engine.dispose()
    d = outcome.details
    return {
        "status": outcome.status, "total_s": round(total, 1), "message": outcome.message,
        "steps": {s["step"]: round(s.get("duration_ms", 0) / 1000, 2) for s in d["steps"]},
        "report": _report(d),
        "tables": [(t["table"], t["action"], t["before"]["dead_tuples"],
                    t.get("after", {}).get("dead_tuples"), round(t.get("duration_ms", 0) / 1000, 2))
                   for t in d["tables"]],
        "indexes": [(i["index"], i["action"], i["reason"], i["before"]["bytes"],
                     i.get("after", {}).get("bytes"), round(i.get("duration_ms", 0) / 1000, 2))
                    for i in d["indexes"]],
    }


def _run_cut(name: str, budget: float) -> dict[str, Any]:
    """The job under a budget per call, called again while it answers `partial`."""
    url = pg_url(name)
    engine = make_engine(url)
    settings = Settings(_env_file=None, app_env="test", database_url=url,  # type: ignore[call-arg]
                        maintenance_statement_timeout=3600, function_max_duration=budget)
    runner = Runner(settings, engine)
    calls: list[float] = []
    started = time.monotonic()
    while True:
        one = time.monotonic()
        outcome = runner.run("db-maintenance", trigger="cli")
        calls.append(round(time.monotonic() - one, 1))
        if outcome.status != "partial":
            break
    total = time.monotonic() - started
    with engine.connect() as conn:
        logged = conn.exec_driver_sql(
            "SELECT status, chunks_done, chunks_total, records_processed FROM cron_job_log "
            f"WHERE run_id = '{outcome.run_id}'").one()
    engine.dispose()
    return {"status": outcome.status, "total_s": round(total, 1), "calls": calls,
            "log": [str(v) for v in logged], "report": _report(outcome.details)}


def _report(details: dict[str, Any]) -> list[Any]:
    return [[(t["table"], t["action"], t["status"]) for t in details["tables"]],
            [(i["index"], i["action"], i["status"]) for i in details["indexes"]]]


def _end_state(name: str) -> list[Any]:
    with psycopg.connect(_dsn(name)) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        # (The service's own tables differ: a cut run writes its log more often.)
        tables = conn.execute("SELECT relname, n_dead_tup FROM pg_stat_user_tables "
                              "WHERE schemaname = 'public' AND relname NOT LIKE 'cron%' "
                              "ORDER BY relname").fetchall()
        indexes = conn.execute(
            "SELECT ic.relname, x.indisvalid FROM pg_index x JOIN pg_class ic ON "
            "ic.oid = x.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace "
            "WHERE n.nspname = 'public' ORDER BY 1").fetchall()
    return [list(map(list, tables)), list(map(list, indexes))]


def _report_of(job: dict[str, Any]) -> list[Any]:
    report: list[Any] = job.pop("report")
    return report


def _run_baseline(name: str) -> dict[str, Any]:
    steps = {}
    with psycopg.connect(_dsn(name), autocommit=True) as conn:
        # A plain REINDEX DATABASE fails on the invalid unique leftover: drop it first.
        for step, sql in (("drop_leftover",
                           "DROP INDEX IF EXISTS ix_trip_participants_trip_id_ccnew"),
                          ("vacuum_analyze_all", "VACUUM (ANALYZE)"),
                          ("reindex_database", f'REINDEX DATABASE "{name}"')):
            started = time.monotonic()
            conn.execute(sql)  # type: ignore[arg-type]
            steps[step] = round(time.monotonic() - started, 2)
    return {"steps": steps, "total_s": round(sum(steps.values()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--chunked", action="store_true",
                        help="also run a copy under a budget per call (FUNCTION_MAX_DURATION)")
    parser.add_argument("--budget", type=float, default=30.0)
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    copies = [f"{BASE}_job", f"{BASE}_baseline"] + ([f"{BASE}_cut"] if args.chunked else [])
    try:
        create_database(BASE)
        started = time.monotonic()
        _fill(pg_url(BASE), 0.1, now)
        per_unit = _size(BASE) / 0.1
        create_database(BASE)
        scale = args.gb * 1024**3 / per_unit
        _fill(pg_url(BASE), scale, now)
        print(f"filled {_size(BASE) / 1024**3:.2f} GB (scale {scale:.2f}) in "
              f"{time.monotonic() - started:.0f}s")
        with psycopg.connect(_dsn(BASE), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # settled, as autovacuum leaves it
        for copy in copies:
            # Statistics are not copied with a database: make the work in each copy.
            create_database(copy, template=BASE)
            started = time.monotonic()
            _make_work(copy)
            print(f"{copy}: bulk deletes/updates in {time.monotonic() - started:.0f}s; "
                  f"{_size(copy) / 1024**3:.2f} GB")
        job = _run_job(copies[0])
        print("job      " + json.dumps(job, indent=None))
        if args.chunked:
            time.sleep(2)  # the statistics of the last statements reach the view
            whole_state = _end_state(copies[0])
            cut = _run_cut(copies[2], args.budget)
            time.sleep(2)
            same = (_end_state(copies[2]) == whole_state
                    and cut["report"] == _report_of(job))
            print(f"cut      calls {len(cut['calls'])} ({', '.join(map(str, cut['calls']))} s), "
                  f"total {cut['total_s']} s, log {cut['log']}, status {cut['status']}")
            ratio = cut["total_s"] / job["total_s"]
            print(f"ratio cut/whole wall time: {ratio:.2f} (target <= 1.15); end states "
                  f"{'match' if same else 'DIFFER'}")
            print("PASS" if ratio <= 1.15 and same else "FAIL")
        baseline = _run_baseline(copies[1])
        print("baseline " + json.dumps(baseline))
        print(f"ratio job/baseline total time: {job['total_s'] / baseline['total_s']:.2f}")
    finally:
        if not args.keep:
            for name in (BASE, *copies):
                drop_database(name)


if __name__ == "__main__":
    main()
