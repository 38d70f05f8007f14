"""promo-cleanup at scale on PostgreSQL, against hand-written set-based SQL in the same run.

    .venv/bin/python -m bench.promo_cleanup                 # 1,000,000 codes
    .venv/bin/python -m bench.promo_cleanup --codes 100000  # quicker

1. Generate the data once into `vsc_bench_promo_tpl`: 100,000 users, N promo codes (10%
   expired, half of those beyond the 90-day retention), 2% of codes with 1-3 redemptions,
   1% of redemptions by deleted accounts, a lagging `used_count` on every 50th redeemed
   code; VACUUM ANALYZE.
2. Copy it twice (CREATE DATABASE … TEMPLATE): one copy for the baseline, one for the job,
   so both start from the same bytes.
3. Baseline: the same three steps and the statistics per tier as four plain statements
   (one per step, no batching).
4. Job: the real runner in a child process (so its peak RSS is its own), with SQLAlchemy
   events timing every transaction that touched `promo_codes`.
5. Check that both copies end identical; print wall times, the ratio, peak memory and the
   longest lock; drop the databases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.generate import (
    analyze,
    create_database,
    drop_database,
    promo_code_redemptions,
    promo_codes,
    users,
)

RETENTION_DAYS = 90
LIMITS = {"ratio": 1.5, "peak_rss_mb": 200.0, "longest_lock_s": 1.0}

# The work promo-cleanup does, as one statement per step.
BASELINE = {
    "used_counts_raised": """
        UPDATE promo_codes c SET used_count = x.n, updated_at = %(now)s
        FROM (SELECT promo_code_id, count(*) AS n FROM promo_code_redemptions
              GROUP BY promo_code_id) x
        WHERE x.promo_code_id = c.id AND coalesce(c.used_count, 0) < x.n""",
    "codes_deleted": """
        DELETE FROM promo_codes c
        WHERE c.expires_at < %(cutoff)s AND coalesce(c.used_count, 0) = 0
          AND NOT EXISTS (SELECT 1 FROM promo_code_redemptions r WHERE r.promo_code_id = c.id)""",
    "codes_deactivated": """
        UPDATE promo_codes SET is_active = false, updated_at = %(now)s
        WHERE is_active AND ((expires_at IS NOT NULL AND expires_at < %(now)s)
              OR (max_uses IS NOT NULL AND used_count >= max_uses))""",
    "statistics_per_tier": """
        SELECT tier, count(*), count(*) FILTER (WHERE is_active),
               count(*) FILTER (WHERE expires_at < %(now)s),
               count(*) FILTER (WHERE max_uses IS NOT NULL AND used_count >= max_uses),
               coalesce(sum(used_count), 0)
        FROM promo_codes GROUP BY tier""",
}

FINGERPRINT = """
    SELECT (SELECT count(*) FROM promo_codes), (SELECT count(*) FROM promo_codes WHERE is_active),
           (SELECT sum(used_count) FROM promo_codes),
           (SELECT count(*) FROM promo_code_redemptions),
           (SELECT md5(string_agg(id::text || is_active::text || used_count, ','
                                  ORDER BY id)) FROM promo_codes)
"""


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(codes: int, users_n: int, now: dt.datetime) -> str:
    from app.db import make_engine

    url = create_database("vsc_bench_promo_tpl")
    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        users(conn, users_n, now=now)
        promo_codes(conn, codes, now=now, expired_fraction=0.10, retention_days=RETENTION_DAYS)
        counts = promo_code_redemptions(conn, codes, users_n, now=now, redeemed_fraction=0.02)
    engine.dispose()
    analyze(url)
    print(f"generated {codes:,} codes, {users_n:,} users, {counts['redemptions']:,} "
          f"redemptions on {counts['codes_with_redemptions']:,} codes in "
          f"{time.perf_counter() - started:.1f} s")
    return "vsc_bench_promo_tpl"


def run_baseline(url: str, now: dt.datetime) -> dict[str, Any]:
    cutoff = now - dt.timedelta(days=RETENTION_DAYS)
    steps: dict[str, int] = {}
    longest = 0.0
    with psycopg.connect(_dsn(url)) as conn:
        started = time.perf_counter()
        for name, sql in BASELINE.items():
            t0 = time.perf_counter()
            with conn.transaction():
                cursor = conn.execute(sql, {"now": now, "cutoff": cutoff})  # type: ignore[arg-type]
                if name == "statistics_per_tier":
                    cursor.fetchall()
                else:
                    steps[name] = cursor.rowcount
            longest = max(longest, time.perf_counter() - t0)
        wall = time.perf_counter() - started
    return {"seconds": wall, "steps": steps, "longest_lock_s": longest}


def run_job_child(url: str, now_iso: str) -> None:
    """In the child: run promo-cleanup through the runner, print one JSON line."""
    from sqlalchemy import event

    from app.config import Settings
    from app.db import make_engine
    from app.runner import Runner

    now = dt.datetime.fromisoformat(now_iso)
    touches = re.compile(r"\bpromo_codes\b")
    spans: dict[str, float] = {"write": 0.0, "read": 0.0}
    counts = {"write": 0, "read": 0}

    engine = make_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if touches.search(statement):
            conn.info.setdefault("lock_t0", time.perf_counter())
            if statement.lstrip().upper().startswith(("UPDATE", "DELETE", "INSERT")):
                conn.info["lock_write"] = True

    def _finish(info: dict[str, Any]) -> None:
        t0 = info.pop("lock_t0", None)
        kind = "write" if info.pop("lock_write", False) else "read"
        if t0 is not None:
            spans[kind] = max(spans[kind], time.perf_counter() - t0)
            counts[kind] += 1

    event.listen(engine, "commit", lambda conn: _finish(conn.info))
    event.listen(engine, "rollback", lambda conn: _finish(conn.info))
    # A streamed read ends when its connection goes back to the pool.
    event.listen(engine.pool, "checkin", lambda _dbapi, record: _finish(record.info))

    settings = Settings(_env_file=None, app_env="test", database_url=url,  # type: ignore[call-arg]
                        cron_secret="b" * 40, data_dir=Path(tempfile.mkdtemp()))
    runner = Runner(settings, engine, clock=lambda: now)
    rss_before = _rss_mb()
    started = time.perf_counter()
    outcome = runner.run("promo-cleanup", trigger="cli")
    wall = time.perf_counter() - started
    engine.dispose()
    print(json.dumps({
        "status": outcome.status, "message": outcome.message, "seconds": wall,
        "steps": {k: v for k, v in outcome.details.get("steps", {}).items()
                  if k != "retention_days"},
        "peak_rss_mb": _rss_mb(), "rss_before_mb": rss_before,
        "longest_write_txn_s": spans["write"], "write_txns": counts["write"],
        "longest_read_s": spans["read"], "reads": counts["read"],
        "batch_size": settings.batch_size,
        "timings_s": outcome.details.get("timings_s"),
    }))


def run_job(url: str, now: dt.datetime) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.promo_cleanup", "--child", url, now.isoformat()],
        capture_output=True, text=True, check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def fingerprint(url: str) -> tuple[Any, ...]:
    with psycopg.connect(_dsn(url)) as conn:
        row = conn.execute(FINGERPRINT).fetchone()
    assert row is not None
    return tuple(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--child", nargs=2, metavar=("URL", "NOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_job_child(*args.child)
        return 0

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    template = generate(args.codes, args.users, now)
    names = {"sql": "vsc_bench_promo_sql", "job": "vsc_bench_promo_job"}
    urls = {kind: create_database(name, template=template) for kind, name in names.items()}
    try:
        baseline = run_baseline(urls["sql"], now)
        job = run_job(urls["job"], now)
        same = fingerprint(urls["sql"]) == fingerprint(urls["job"])
    finally:
        if not args.keep:
            for name in [*names.values(), template]:
                drop_database(name)

    ratio = job["seconds"] / baseline["seconds"]
    longest_lock = job["longest_write_txn_s"]
    print(f"\npromo-cleanup, {args.codes:,} codes (PostgreSQL; 2 shared cores)")
    print(f"  baseline, {len(BASELINE)} set-based statements : {baseline['seconds']:8.2f} s  "
          f"(longest statement {baseline['longest_lock_s']:.2f} s)")
    print(f"  job through the runner           : {job['seconds']:8.2f} s  "
          f"({job['write_txns']} write batches of <= {job['batch_size']})")
    print(f"  ratio job / baseline             : {ratio:8.2f}   (limit {LIMITS['ratio']})")
    print(f"  peak RSS of the job process      : {job['peak_rss_mb']:8.1f} MB "
          f"(after imports {job['rss_before_mb']:.1f} MB; limit {LIMITS['peak_rss_mb']:.0f})")
    print(f"  longest write txn on promo_codes : {longest_lock:8.3f} s  "
          f"(limit {LIMITS['longest_lock_s']})")
    print(f"  longest read of promo_codes      : {job['longest_read_s']:8.3f} s  "
          "(ACCESS SHARE only: blocks DDL, never reads or writes)")
    print(f"  steps (job)      : {job['steps']}")
    print(f"  job step times   : {job['timings_s']}")
    print(f"  steps (baseline) : {baseline['steps']}")
    print(f"  same end state   : {same}")
    ok = (same and job["status"] == "success" and job["steps"] == baseline["steps"]
          and ratio <= LIMITS["ratio"] and job["peak_rss_mb"] < LIMITS["peak_rss_mb"]
          and longest_lock < LIMITS["longest_lock_s"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
