"""Queue mode (EXECUTION_MODE=queue) on PostgreSQL: overhead, scale-out, the fleet's Stripe rate.

    .venv/bin/python -m bench.queue                      # both parts
    .venv/bin/python -m bench.queue --part overhead      # one small run, inline vs queue
    .venv/bin/python -m bench.queue --part scale --messages 12000
    .venv/bin/python -m bench.queue --part stripe        # 10,000 subscriptions, 4 workers

overhead: trip-reminders with a few travellers (one range chunk and the closing sweep),
run by the runner in this process, `--rounds` times in each mode, the notification tables
emptied between rounds; no worker, so the queued call works its chunks itself (deferring,
its bounded worker, closing).  Target: the queued call's median within 2x the inline one.

stripe: subscription-sync of `--subscriptions` (10,000) in queue mode, read by
`--workers` (4) `voyagesmart-cron worker` processes alongside one another
(STRIPE_SYNC_STRATEGY=retrieve: read chunks of 500), `STRIPE_RATE_LIMIT=100`, against
bench/stripe_fake.py adding 20 ms per call.  The call only plans (FUNCTION_MAX_DURATION=1);
the figure is the aggregate rate at the server, over the read stage (first request to
last), and its busiest second.  Target: between 90 and 100 requests/s.

scale: `--messages` reminders in chunks of 200 (tests/support/small_chunks), an SMTP sink
that spends 5 ms per message (latency-bound, as with a real provider), one call with
FUNCTION_MAX_DURATION=1 and then 1, 2 and 4 `voyagesmart-cron worker` processes; the
figure is messages per second from the call to the run's close, and each worker's peak
RSS.  The rate judged is the send stage's (the first send chunk's start to the last one's
end: the latency-bound work); the rate from the call to the run's close, with its count
and plan stages, is printed beside it.
Targets: N workers at least 0.8 x N times one worker's rate; peak RSS < 200 MB.
The send chunks of the run go side by side, each over its own connection
(SMTP_MAX_CONNECTIONS=N: one per worker).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import make_engine
from bench.generate import bench_database

ROOT = Path(__file__).resolve().parents[1]
SMALL_CHUNKS = ROOT / "tests" / "support" / "small_chunks"
RESET = ("TRUNCATE cron_notification, cron_job_log, cron_job_lease, cron_run_chunk, "
         "procrastinate_jobs, procrastinate_workers, procrastinate_periodic_defers, "
         "procrastinate_events RESTART IDENTITY CASCADE")
CLOSED = (RunStatus.SUCCESS, RunStatus.WARNING, RunStatus.ERROR, RunStatus.ABANDONED)


def _reset(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(RESET)


def _seed(engine: Engine, count: int) -> None:
    from tests.support.notification_data import seed_travellers

    now = dt.datetime.now(dt.UTC)
    seed_travellers(engine, now.date() + dt.timedelta(days=7), now - dt.timedelta(days=30),
                    count)


def overhead(rounds: int, travellers: int) -> bool:
    from tests.support.notification_data import ScriptedSmtp

    sink = ScriptedSmtp().start()
    try:
        with bench_database("queue_overhead") as url:
            engine = make_engine(url)
            _seed(engine, travellers)
            timings: dict[str, list[float]] = {"inline": [], "queue": []}
            for _ in range(rounds):
                for mode in timings:
                    _reset(engine)
                    settings = Settings(
                        _env_file=None, app_env="test",  # type: ignore[call-arg]
                        database_url=url, execution_mode=mode, cron_catch_up=False,
                        smtp_host=sink.host, smtp_port=sink.port, smtp_security="none",
                        data_dir=Path("/tmp/vsc-bench-queue"),
                        trip_reminders_send_brake_count=100_000)
                    started = time.perf_counter()
                    outcome = Runner(settings, engine).run("trip-reminders", trigger="cli")
                    timings[mode].append(time.perf_counter() - started)
                    assert outcome.status == RunStatus.SUCCESS, outcome.message
            engine.dispose()
    finally:
        sink.stop()
    inline, queued = (statistics.median(timings[m]) for m in ("inline", "queue"))
    ratio = queued / inline
    ok = ratio <= 2.0
    print(f"overhead: {travellers} reminders, median of {rounds}: inline {inline * 1000:.0f} ms,"
          f" queue {queued * 1000:.0f} ms, ratio {ratio:.2f} (target <= 2.00) "
          + ("PASS" if ok else "FAIL"))
    return ok


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_recorder(record: Path, delay_s: float) -> tuple[subprocess.Popen[bytes], int]:
    """bench/smtp_recorder.py in its own process: it spends `delay_s` per message and only
    writes the recipients down (parsing each message would spend the CPU the workers
    need, as a real provider's would not)."""
    from bench.chunked_runs import _connects, _free_port, _wait

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.smtp_recorder", str(port),
                             str(record), str(delay_s)], cwd=ROOT)
    _wait(lambda: _connects(port), proc, "SMTP sink")
    return proc, port


def _send_stage_s(engine: Engine) -> float:
    """From the first send chunk's start to the last mail chunk's end, in seconds."""
    with engine.connect() as conn:
        return float(conn.execute(sa.text(
            "SELECT extract(epoch FROM max(ended_at) - min(started_at)) FROM cron_run_chunk"
            " WHERE args->>'step' IN ('send', 'sweep')")).scalar_one())


def _scale_once(url: str, workers: int, messages: int, tmp: Path
                ) -> tuple[float, float, float]:
    from tests.support.queue_workers import WorkerProcess, wait_for_workers

    engine = make_engine(url)
    _reset(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE users, trips, trip_participants CASCADE")
        conn.exec_driver_sql("DELETE FROM auth.users")
    _seed(engine, messages)
    record = tmp / f"taken-{workers}.txt"
    sink, port = _start_recorder(record, 0.005)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(SMALL_CHUNKS)]),
           "TEST_MAIL_CHUNK": "200", "APP_ENV": "test", "DATABASE_URL": url,
           "CRON_SECRET": "bench-secret-0123456789-abcdefghijkl", "DATA_DIR": str(tmp),
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_SECURITY": "none",
           "CRON_CATCH_UP": "false", "TRIP_REMINDERS_SEND_BRAKE_COUNT": "1000000",
           "EXECUTION_MODE": "queue", "QUEUE_POLLING_INTERVAL": "0.5",
           "FUNCTION_MAX_DURATION": "1", "SMTP_MAX_CONNECTIONS": str(workers)}
    fleet = [WorkerProcess(env, f"w{i}", tmp).start() for i in range(workers)]
    try:
        wait_for_workers(engine, workers)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app", "run", "trip-reminders"],
                       env={**os.environ, **env}, cwd=ROOT, check=False, capture_output=True)
        status = None
        while status not in CLOSED:
            time.sleep(0.1)
            with engine.connect() as conn:
                status = conn.execute(sa.text("SELECT status FROM cron_job_log "
                                              "WHERE job_name = 'trip-reminders'")).scalar()
        took = time.perf_counter() - started
        sending = _send_stage_s(engine)
        rss = max(_peak_rss_mb(w.proc.pid) for w in fleet if w.proc is not None)
    finally:
        for worker in fleet:
            worker.stop()
        sink.terminate()
        sink.wait(10)
        engine.dispose()
    taken = record.read_text().splitlines()
    if len(taken) != messages or len(set(taken)) != messages:
        raise RuntimeError(f"the sink took {len(taken)} messages for {len(set(taken))} "
                           f"recipients; {messages} expected, once each")
    return messages / sending, messages / took, rss


def scale(messages: int) -> bool:
    import tempfile

    rates: dict[int, float] = {}
    ok = True
    with bench_database("queue_scale") as url, tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2, 4):
            rate, whole, rss = _scale_once(url, workers, messages, Path(tmp))
            rates[workers] = rate
            target = 0.8 * workers * rates[1]
            passed = rate >= target and rss < 200
            ok = ok and passed
            print(f"scale: {workers} worker(s): {rate:.0f} messages/s over the send stage "
                  f"(target >= {target:.0f}; {rate / rates[1]:.2f}x one worker), "
                  f"{whole:.0f}/s from the call to the close (planning included), "
                  f"peak RSS {rss:.0f} MB (target < 200) " + ("PASS" if passed else "FAIL"))
    return ok


def stripe(subscriptions: int, workers: int, latency: float) -> bool:
    import tempfile
    import threading

    from bench.stripe_fake import serve
    from bench.subscription_sync import _fill
    from tests.support.queue_workers import WorkerProcess, wait_for_workers
    from tests.support.servers import free_port
    from tests.support.stripe_servers import busiest

    limit = 100.0
    arrivals: list[float] = []
    port = free_port()
    server = serve(port, subscriptions, latency, arrivals)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with bench_database("queue_stripe") as url, tempfile.TemporaryDirectory() as tmp:
        _fill(url, subscriptions)
        engine = make_engine(url)
        env = {"PYTHONPATH": str(ROOT), "APP_ENV": "test", "DATABASE_URL": url,
               "CRON_SECRET": "bench-secret-0123456789-abcdefghijkl", "DATA_DIR": tmp,
               "CRON_CATCH_UP": "false", "EXECUTION_MODE": "queue",
               "QUEUE_POLLING_INTERVAL": "0.5", "STRIPE_SECRET_KEY": "sk_test_bench",
               "STRIPE_API_BASE": f"http://127.0.0.1:{port}",
               "STRIPE_RATE_LIMIT": str(limit), "STRIPE_SYNC_STRATEGY": "retrieve",
               "STRIPE_CONCURRENCY": "8",
               "STRIPE_TIER_MAP": "price_bench_premium:premium,price_bench_ai:ai",
               "SUBSCRIPTION_SYNC_DOWNGRADE_BRAKE_COUNT": "100000"}
        fleet = [WorkerProcess(env, f"w{i}", Path(tmp)).start() for i in range(workers)]
        try:
            wait_for_workers(engine, workers)
            settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()  # type: ignore[call-arg]
                                                   if k not in ("PYTHONPATH",)})
            first = Runner(settings, engine).run("subscription-sync", trigger="cli",
                                                 until=time.monotonic() + 1)
            status = first.status
            while status not in CLOSED:
                time.sleep(0.5)
                with engine.connect() as conn:
                    status = conn.execute(sa.text(
                        "SELECT status FROM cron_job_log WHERE run_id = :run"),
                        {"run": first.run_id}).scalar()
            with engine.connect() as conn:
                row = conn.execute(sa.text(
                    "SELECT message, chunks_total FROM cron_job_log WHERE run_id = :run"),
                    {"run": first.run_id}).one()
                spread = conn.execute(sa.text(
                    "SELECT split_part(worker, '@', 1), count(*) FROM cron_run_chunk"
                    " WHERE run_id = :run GROUP BY 1 ORDER BY 1"), {"run": first.run_id}).all()
            rss = max(_peak_rss_mb(w.proc.pid) for w in fleet if w.proc is not None)
        finally:
            for worker in fleet:
                worker.stop()
            server.shutdown()
            engine.dispose()
    times = sorted(arrivals)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    rate = (len(times) - 1) / span if span else 0.0
    peak = busiest(times)
    passed = 0.9 * limit <= rate <= limit and peak <= limit and status == RunStatus.SUCCESS
    print(f"stripe: {subscriptions} subscriptions, {workers} workers, limit {limit:.0f}/s, "
          f"{latency * 1000:.0f} ms per call: {len(times)} requests in {span:.1f} s = "
          f"{rate:.1f} req/s (target 90-100), busiest second {peak}; run {status}: "
          f"{row.message}; {row.chunks_total} chunks by worker {dict(spread)}; peak RSS "
          f"{rss:.0f} MB " + ("PASS" if passed else "FAIL"))
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["overhead", "scale", "stripe", "both"],
                        default="both")
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--travellers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=12000)
    args = parser.parse_args()
    parts: list[Callable[[], bool]] = []
    if args.part in ("overhead", "both"):
        parts.append(lambda: overhead(args.rounds, args.travellers))
    if args.part in ("scale", "both"):
        parts.append(lambda: scale(args.messages))
    if args.part == "stripe":
        parts.append(lambda: stripe(args.subscriptions, args.workers, args.latency))
    results = [part() for part in parts]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
