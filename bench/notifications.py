"""trip-reminders at scale on PostgreSQL: send throughput vs bare smtplib, selection query.

    .venv/bin/python -m bench.notifications                  # both parts
    .venv/bin/python -m bench.notifications --part send      # 10,000 emails only
    .venv/bin/python -m bench.notifications --part send --database sqlite   # embedded db
    .venv/bin/python -m bench.notifications --part send --durable  # MAIL_DURABLE_CLAIMS
    .venv/bin/python -m bench.notifications --part select    # 1M trips / 3M participants

send:
1. `vsc_bench_notif_send` (or a SQLite file): 5,000 trips starting in 7 days, each with
   its owner and one accepted participant (10,000 recipients, distinct users), pending and
   declined invitations beside them.
2. An aiosmtpd sink in its own process (`aiosmtpd.handlers.Sink`, accepts and discards).
3. Baseline: the same 10,000 messages (unsubscribe links included), rendered beforehand,
   sent by a bare smtplib loop over one connection (`sendmail` of the ready bytes).
4. Job: `python -m app run trip-reminders` in a child process (selection, planning rows,
   rendering with each recipient's signed unsubscribe link, hand-over records and the SMTP
   session all included; its brake's count raised above 10,000); its peak RSS is its own.
5. Baseline again; the job's ratio uses the mean of the baselines either side of it.
   Steps 4-5 repeat `--rounds` times (3), the notification tables emptied in between; the
   median ratio is the figure (a loaded machine moves single runs by 10% or more).

select:
1. `vsc_bench_notif_select`: 500,000 users, 1,000,000 trips starting over 13 months,
   3,000,000 participants (owner, accepted, pending in turn), VACUUM ANALYZE.
2. Time the recipient query of one day (all rows fetched through a server-side cursor),
   with the vs_0002 partial index and without it; print the plan.

Databases are dropped afterwards.  The machine may be shared: figures vary run to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import make_engine
from app.jobs.trip_reminders import KIND, TEMPLATE, recipients_query
from app.mail.smtp import Mailer
from app.mail.unsubscribe import Links
from app.ops.migrate import upgrade
from bench.generate import (
    analyze,
    bench_database,
    trip_id,
    trip_participants,
    trips,
    user_id,
    users,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.UTC)
TARGET = NOW.date() + dt.timedelta(days=7)
SECRET = "bench-secret-0123456789-abcdefghijklmnop"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
         "-c", "aiosmtpd.handlers.Sink"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            smtplib.SMTP("127.0.0.1", port, timeout=1).quit()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("SMTP sink did not start")


# --- send -----------------------------------------------------------------------------------


def _seed_send(engine: Engine, trips_n: int, day: dt.date = TARGET) -> None:
    with engine.begin() as conn:
        users(conn, trips_n * 3, now=NOW, inactive_fraction=0.0)
        conn.execute(sa.text(f"""
            INSERT INTO trips (id, name, description, start_date, end_date, destination,
                preferences, is_private, budget_total, owner_id, created_at, updated_at)
            SELECT {trip_id('g')}, 'Trip ' || g, 'Bench trip', :day, :day + 6,
                   (ARRAY['Lisbon', 'Kyoto', 'Oslo', 'Hanoi', 'Lima'])[1 + g % 5],
                   '{{}}'::jsonb, false, 1000, {user_id('g')}, :now, :now
            FROM generate_series(1, CAST(:n AS int)) AS g
        """), {"day": day, "now": NOW, "n": trips_n})
        # Every user wants email here, so all 10,000 are sent.
        conn.execute(sa.text("UPDATE users SET preferences = '{\"language\": \"en\"}'"))
        # Per trip: user n+g accepted, user 2n+g declined, an invitation still pending.
        conn.execute(sa.text(f"""
            INSERT INTO trip_participants (id, trip_id, user_id, role, invited_email,
                invitation_status, created_at)
            SELECT gen_random_uuid(), {trip_id('g')},
                   CASE k WHEN 0 THEN {user_id(':n + g')} WHEN 1 THEN {user_id('2 * :n + g')}
                   END,
                   'member', 'guest' || g || '-' || k || '@bench.voyagesmart.app',
                   (ARRAY['accepted', 'declined', 'pending'])[k + 1], :now
            FROM generate_series(1, CAST(:n AS int)) AS g, generate_series(0, 2) AS k
        """), {"n": trips_n, "now": NOW})
        # The app adds each trip's owner as an admin participant (emailed once, not twice).
        conn.execute(sa.text(f"""
            INSERT INTO trip_participants (id, trip_id, user_id, role, invitation_status,
                created_at)
            SELECT gen_random_uuid(), {trip_id('g')}, {user_id('g')}, 'admin', 'accepted', :now
            FROM generate_series(1, CAST(:n AS int)) AS g
        """), {"n": trips_n, "now": NOW})


def _seed_send_sqlite(engine: Engine, trips_n: int, day: dt.date = TARGET) -> None:
    """The same dataset as `_seed_send`, for the embedded SQLite default (built in Python)."""
    from app.models import Trip, TripParticipant, User

    uid = [uuid.uuid4() for _ in range(trips_n * 3)]
    tid = [uuid.uuid4() for _ in range(trips_n)]
    places = ["Lisbon", "Kyoto", "Oslo", "Hanoi", "Lima"]
    with engine.begin() as conn:
        conn.execute(sa.insert(User), [
            {"id": u, "email": f"user{i + 1}@bench.voyagesmart.app", "full_name": f"User {i + 1}",
             "preferences": {"language": "en"}, "created_at": NOW, "last_login": NOW}
            for i, u in enumerate(uid)])
        conn.execute(sa.insert(Trip), [
            {"id": t, "name": f"Trip {g + 1}", "description": "Bench trip", "start_date": day,
             "end_date": day + dt.timedelta(days=6), "destination": places[(g + 1) % 5],
             "preferences": {}, "is_private": False, "budget_total": 1000,
             "owner_id": uid[g], "created_at": NOW, "updated_at": NOW}
            for g, t in enumerate(tid)])
        conn.execute(sa.insert(TripParticipant), [
            {"id": uuid.uuid4(), "trip_id": t, "role": "participant",
             "user_id": (uid[trips_n + g], uid[2 * trips_n + g], None)[k],
             "invited_email": f"guest{g}-{k}@bench.voyagesmart.app",
             "invitation_status": ("accepted", "declined", "pending")[k], "created_at": NOW}
            for g, t in enumerate(tid) for k in range(3)])


@contextmanager
def _send_database(kind: str, trips_n: int, day: dt.date = TARGET) -> Iterator[str]:
    if kind == "postgresql":
        with bench_database("notif_send") as url:
            _seed_send(make_engine(url), trips_n, day)
            # As a database that was not bulk-loaded a moment ago: statistics there, and
            # no autovacuum pass over the new rows competing with the first job.
            analyze(url)
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        upgrade(engine)
        _seed_send_sqlite(engine, trips_n, day)
        engine.dispose()
        yield url


def _messages(settings: Settings, engine: Engine) -> list[tuple[str, str, bytes]]:
    """The job's messages, rendered the way the job renders them, as ready bytes."""
    mailer = Mailer(settings)
    links = Links(settings)
    out = []
    with engine.connect() as conn:
        for row in conn.execute(recipients_query(TARGET)):
            payload = {
                "recipient_name": row.full_name, "days_ahead": 7,
                "trip": {"name": row.name, "destination": row.destination,
                         "start_date": row.start_date.isoformat(),
                         "end_date": row.end_date.isoformat(),
                         "participants": int(row.travellers),
                         "url": f"{settings.app_base_url}/trips/{row.trip_id}"},
            }
            message = mailer.compose(TEMPLATE, row.email, "en", payload,
                                     unsubscribe_url=links.url(KIND, row.user_id),
                                     key=str(uuid.uuid4()))
            out.append((message.sender, message.recipient, message.data))
    return out


def _baseline_send_message(port: int, messages: list[tuple[str, str, bytes]]) -> float:
    """smtplib's message API over the same messages: serialization included."""
    import email
    import email.policy

    parsed = [email.message_from_bytes(m[2], policy=email.policy.compat32)
              for m in messages]
    started = time.perf_counter()
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    for message in parsed:
        smtp.send_message(message)
    smtp.quit()
    return time.perf_counter() - started


def _baseline(port: int, messages: list[tuple[str, str, bytes]]) -> float:
    started = time.perf_counter()
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    for sender, rcpt, data in messages:
        smtp.sendmail(sender, [rcpt], data)
    smtp.quit()
    return time.perf_counter() - started


def _job(url: str, port: int, tmp: Path, durable: bool) -> tuple[float, dict[str, Any], int]:
    env = {**os.environ, "APP_ENV": "test", "DATABASE_URL": url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp), "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
           "SMTP_SECURITY": "none", "CRON_TIMEZONE": "UTC", "LOG_LEVEL": "WARNING",
           "MAIL_DURABLE_CLAIMS": str(durable).lower(),
           # 10,000 reminders on a database without history: above the brake's count.
           # The bench measures sending, so the brake is raised, not forced.
           "TRIP_REMINDERS_SEND_BRAKE_COUNT": "1000000"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", "run", "trip-reminders"], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    import json

    text = done.stdout[done.stdout.find("{"):]
    outcome: dict[str, Any] = json.loads(text) if text else {"error": done.stderr[-2000:]}
    return elapsed, outcome, max(peak_kb, before)


def _reset_sent(engine: Engine) -> None:
    """Back to the state before the job ran: nothing planned, no run, no lease."""
    tables = ("cron_notification", "cron_job_log", "cron_job_lease")
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)}"))
        else:
            for table in tables:
                conn.execute(sa.text(f"DELETE FROM {table}"))


def bench_send(trips_n: int, database: str, durable: bool, rounds: int) -> None:
    """Baseline, then `rounds` times: job, baseline.  Each job is compared with the
    baselines either side of it; the median over rounds is the figure."""
    sink, port = _start_sink()
    jobs: list[tuple[float, dict[str, Any], int]] = []
    try:
        with _send_database(database, trips_n) as url:
            engine = make_engine(url)
            settings = Settings(_env_file=None, app_env="test", database_url=url,  # type: ignore[call-arg]
                                cron_secret=SECRET)
            messages = _messages(settings, engine)
            print(f"recipients: {len(messages)}; message size "
                  f"{statistics.mean(len(m[2]) for m in messages):.0f} bytes")
            tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "vsc-bench-notif"
            bases = [_baseline(port, messages)]
            for index in range(rounds):
                if index:
                    _reset_sent(engine)
                jobs.append(_job(url, port, tmp, durable))
                bases.append(_baseline(port, messages))
            base_msg = _baseline_send_message(port, messages)
            engine.dispose()
    finally:
        sink.terminate()
        sink.wait(10)
    n = len(messages)
    print(f"database: {database}" + (", MAIL_DURABLE_CLAIMS=true" if durable else ""))
    print("baseline smtplib loop: " + ", ".join(f"{b:.2f} s" for b in bases)
          + f" ({n / statistics.mean(bases):.0f} msg/s, mean)")
    ratios, own_ratios = [], []
    for index, (elapsed, outcome, _peak) in enumerate(jobs):
        base = (bases[index] + bases[index + 1]) / 2
        own = (outcome.get("duration_ms") or 0) / 1000
        ratios.append(base / elapsed)
        own_ratios.append(base / own if own else 0.0)
        print(f"job {index + 1} (child process, whole run): {elapsed:.2f} s "
              f"({n / elapsed:.0f} msg/s); status {outcome.get('status')}, sent "
              f"{outcome.get('records_processed')}; own duration {own:.2f} s; steps "
              f"{outcome.get('details', {}).get('timings_ms')}; ratio {ratios[-1]:.2f} "
              f"(own duration: {own_ratios[-1]:.2f})")
    print(f"throughput ratio job/baseline, median of {rounds}: "
          f"{statistics.median(ratios):.2f} (target >= 0.70); from the job's own duration "
          f"(no interpreter start): {statistics.median(own_ratios):.2f}")
    last = jobs[-1][0]
    print(f"baseline smtplib send_message loop (serializes each message): {base_msg:.2f} s "
          f"({n / base_msg:.0f} msg/s); ratio last job/that: {base_msg / last:.2f}")
    peak_kb = max(job[2] for job in jobs)
    print(f"peak RSS of the job process: {peak_kb / 1024:.0f} MB (target < 200 MB)")


# --- select ---------------------------------------------------------------------------------


def _time_query(engine: Engine, day: dt.date, repeats: int = 3) -> tuple[list[float], int]:
    times, n = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(
                recipients_query(day))
            n = sum(1 for _ in result)
        times.append(time.perf_counter() - started)
    return times, n


def bench_select(trips_n: int, participants_per_trip: int, users_n: int) -> None:
    with bench_database("notif_select") as url:
        engine = make_engine(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            users(conn, users_n, now=NOW)
            trips(conn, trips_n, users_n, now=NOW)
            trip_participants(conn, trips_n, users_n, participants_per_trip, now=NOW)
        analyze(url)
        with engine.connect() as conn:
            counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                      for t in ("users", "trips", "trip_participants")}
        print(f"generated {counts} in {time.perf_counter() - started:.0f} s")
        compiled = recipients_query(TARGET).compile(engine, compile_kwargs={
            "literal_binds": True})
        with engine.connect() as conn:
            plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}")).all()
        print("\n".join("  " + r[0] for r in plan))
        with_index, n = _time_query(engine, TARGET)
        print(f"selection of {TARGET} ({n} recipients), with ix_trip_participants_accepted_"
              f"trip: " + ", ".join(f"{t * 1000:.0f} ms" for t in with_index))
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_trip_participants_accepted_trip"))
        conn_analyze = url
        analyze(conn_analyze)
        without, n2 = _time_query(engine, TARGET)
        print("same query without it (ix_trip_participants_trip_id only): "
              + ", ".join(f"{t * 1000:.0f} ms" for t in without))
        assert n == n2
        print(f"best with index: {min(with_index) * 1000:.0f} ms (target < 2000 ms)")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--part", choices=("send", "select", "both"), default="both")
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--trips", type=int, default=1_000_000)
    parser.add_argument("--participants-per-trip", type=int, default=3)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql",
                        help="database of the send part (the select part is PostgreSQL)")
    parser.add_argument("--durable", action="store_true",
                        help="send part with MAIL_DURABLE_CLAIMS=true (PostgreSQL)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="job runs of the send part, each between two baselines")
    args = parser.parse_args()
    if args.part in ("send", "both"):
        bench_send(args.emails // 2, args.database, args.durable, args.rounds)
    if args.part in ("select", "both"):
        bench_select(args.trips, args.participants_per_trip, args.users)


if __name__ == "__main__":
    main()
