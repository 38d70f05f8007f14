"""trip-reminders cut by FUNCTION_MAX_DURATION against the same run left whole.

    .venv/bin/python -m bench.chunked_runs                        # 200,000 emails, PostgreSQL
    .venv/bin/python -m bench.chunked_runs --emails 20000         # quicker
    .venv/bin/python -m bench.chunked_runs --database sqlite      # the embedded default
    .venv/bin/python -m bench.chunked_runs --budget 30 --order chunked-first

1. One database (`vsc_bench_notif_send`, or a SQLite file): `--emails / 2` trips starting
   in 7 days, each with its owner and one accepted participant (bench/notifications.py's
   dataset), pending and declined invitations beside them.
2. A recording SMTP sink in its own process (bench/smtp_recorder.py): every recipient it
   took, one line each.
3. Whole: uvicorn serving the app without a time budget; one crontab-style POST of
   `/api/cron/trip-reminders` sends everything.
4. Chunked: the notification and run tables emptied, uvicorn again with
   `FUNCTION_MAX_DURATION=--budget`; POSTs, one after another as the crontab loop makes
   them, until the answer is no longer 202 `partial`.
5. Per side: wall time from the first request to the last answer, calls, the longest call
   (it must stay within the budget), and at the sink the duplicates and the recipients
   lost against the expected set (the recipient query of the target day).  The figure is
   the ratio chunked / whole (target <= 1.15, no duplicate, none lost).

`--order` chooses which side runs first (the second finds warmer caches).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.registry import JOBS, previous_fire
from app.db import make_engine, table_of
from app.jobs.trip_reminders import recipients_query
from app.models import CronJobLog, CronRunChunk
from bench.notifications import NOW, SECRET, _free_port, _send_database

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.15
# The day a crontab call now serves: its slot's day plus 7 (before 08:00 UTC, yesterday's).
TARGET = previous_fire(JOBS["trip-reminders"].schedule, NOW).date() + dt.timedelta(days=7)
log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)
RUN_TABLES = ("cron_notification", "cron_run_chunk", "cron_job_log", "cron_job_lease")


@dataclass
class Side:
    name: str
    wall_s: float = 0.0
    calls: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    got: Counter[str] = field(default_factory=Counter)
    # From the run's own rows: seconds before its first chunk (planning), in its chunks.
    plan_s: float = 0.0
    chunks_s: float = 0.0
    chunks: int = 0

    @property
    def final(self) -> dict[str, Any]:
        return self.calls[-1][2] if self.calls else {}


def _start_sink(record: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.smtp_recorder", str(port),
                             str(record)], cwd=ROOT)
    _wait(lambda: _connects(port), proc, "SMTP sink")
    return proc, port


def _connects(port: int) -> bool:
    import smtplib

    try:
        smtplib.SMTP("127.0.0.1", port, timeout=1).quit()
        return True
    except OSError:
        return False


def _wait(ready: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if ready():
            return
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def _serve(url: str, smtp_port: int, data_dir: Path, budget: float | None
           ) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "APP_ENV": "test", "DATABASE_URL": url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(data_dir), "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port),
           "SMTP_SECURITY": "none", "CRON_TIMEZONE": "UTC", "LOG_LEVEL": "WARNING",
           "CRON_CATCH_UP": "false",
           # The bench measures sending at scale, not the brake: raised, not forced.
           "TRIP_REMINDERS_SEND_BRAKE_COUNT": "100000000"}
    env.pop("FUNCTION_MAX_DURATION", None)
    env.pop("VERCEL", None)
    if budget is not None:
        env["FUNCTION_MAX_DURATION"] = f"{budget:g}"
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            httpx.get(base + "/", timeout=1)
            return True
        except httpx.TransportError:
            return False

    _wait(answers, proc, "uvicorn")
    return proc, base


def _account(side: Side, engine: Engine) -> None:
    """Where the side's time went, from its run's rows (before they are emptied)."""
    with engine.connect() as conn:
        started = conn.execute(sa.select(sa.func.min(log_t.c.started_at))
                               .where(log_t.c.job_name == "trip-reminders")).scalar()
        first, total_ms, count = conn.execute(sa.select(
            sa.func.min(chunk_t.c.started_at), sa.func.sum(chunk_t.c.duration_ms),
            sa.func.count()).where(chunk_t.c.status == "done")).one()
    if started is not None and first is not None:
        side.plan_s = (first - started).total_seconds()
    side.chunks_s, side.chunks = (total_ms or 0) / 1000, int(count)


def _reset(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(RUN_TABLES)}"))
        else:
            for table in RUN_TABLES:
                conn.execute(sa.text(f"DELETE FROM {table}"))


def _lines(record: Path) -> list[str]:
    return record.read_text(encoding="utf-8").splitlines()


def _run_side(side: Side, url: str, smtp_port: int, record: Path, tmp: Path,
              budget: float | None, max_calls: int) -> None:
    proc, base = _serve(url, smtp_port, tmp / side.name, budget)
    before = len(_lines(record))
    try:
        # The whole side sends everything in one call: hours, at most.
        with httpx.Client(timeout=6 * 3600) as http:
            started = time.perf_counter()
            for _ in range(max_calls):
                clock = time.perf_counter()
                answer = http.post(f"{base}/api/cron/trip-reminders",
                                   headers={"Authorization": f"Bearer {SECRET}",
                                            "X-Cron-Source": "crontab"})
                side.calls.append((answer.status_code, time.perf_counter() - clock,
                                   answer.json()))
                if answer.status_code != 202:
                    break
            side.wall_s = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)
    side.got = Counter(_lines(record)[before:])
    engine = make_engine(url)
    _account(side, engine)
    engine.dispose()


def _expected(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row.email for row in conn.execute(recipients_query(TARGET))}


def _report(side: Side, expected: set[str]) -> bool:
    duplicates = sum(n - 1 for n in side.got.values() if n > 1)
    lost = len(expected - set(side.got))
    strangers = len(set(side.got) - expected)
    codes = Counter(code for code, _, _ in side.calls)
    longest = max(took for _, took, _ in side.calls)
    final = side.final
    timings = final.get("details", {}).get("timings_ms")
    print(f"{side.name}: {side.wall_s:.1f} s wall, {len(side.calls)} call(s) "
          f"{dict(codes)}, longest call {longest:.1f} s; final {final.get('status')}, "
          f"{final.get('records_processed')} sent; at the sink {sum(side.got.values())} "
          f"messages, {duplicates} duplicate(s), {lost} lost, {strangers} unexpected")
    if timings:
        print(f"  steps of the closing invocation (ms): {timings}")
    if final.get("status") != "success":
        print(f"  last answer: {str(final.get('message'))[:300]}")
    outside = side.wall_s - side.plan_s - side.chunks_s
    print(f"  planning (run start to first chunk) {side.plan_s:.1f} s; {side.chunks} chunks "
          f"{side.chunks_s:.1f} s; outside chunks and planning {outside:.1f} s"
          + (f" ({outside / len(side.calls):.2f} s per call)" if side.calls else ""))
    if len(side.calls) > 1:
        # Seconds of each call / chunks done after it: the first call also plans the run.
        print("  calls (s/chunks done): " + ", ".join(
            f"{took:.1f}/{answer.get('details', {}).get('chunks_done', '-')}"
            for _, took, answer in side.calls))
    return (duplicates == 0 and lost == 0 and strangers == 0
            and final.get("status") == "success")


def bench(emails: int, database: str, budget: float, order: str, max_calls: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp_name, \
            _send_database(database, emails // 2, TARGET) as url:
        tmp = Path(tmp_name)
        record = tmp / "received.txt"
        record.touch()
        engine = make_engine(url)
        expected = _expected(engine)
        print(f"database: {database}; expected recipients: {len(expected)}; "
              f"FUNCTION_MAX_DURATION={budget:g} for the chunked side")
        sink, smtp_port = _start_sink(record)
        whole, chunked = Side("whole"), Side(f"chunked ({budget:g} s)")
        sides = [(whole, None), (chunked, budget)]
        if order == "chunked-first":
            sides.reverse()
        try:
            for index, (side, side_budget) in enumerate(sides):
                if index:
                    _reset(engine)
                _run_side(side, url, smtp_port, record, tmp, side_budget, max_calls)
        finally:
            sink.terminate()
            sink.wait(30)
            engine.dispose()
    ok = all([_report(whole, expected), _report(chunked, expected)])
    ratio = chunked.wall_s / whole.wall_s
    within = max(took for _, took, _ in chunked.calls) <= budget
    print(f"ratio chunked/whole: {ratio:.3f} (target <= {TARGET_RATIO}); calls "
          f"{len(chunked.calls)}; every call within the budget: {within}")
    passed = ok and ratio <= TARGET_RATIO and within
    print("PASS" if passed else "FAIL")
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--emails", type=int, default=200_000)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="FUNCTION_MAX_DURATION of the chunked side (seconds)")
    parser.add_argument("--order", choices=("whole-first", "chunked-first"),
                        default="whole-first")
    parser.add_argument("--max-calls", type=int, default=500)
    args = parser.parse_args()
    return 0 if bench(args.emails, args.database, args.budget, args.order,
                      args.max_calls) else 1


if __name__ == "__main__":
    sys.exit(main())
