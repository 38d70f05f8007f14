"""Queue mode (EXECUTION_MODE=queue): a run's chunks go to `voyagesmart-cron worker`
processes on the procrastinate queue.  Real PostgreSQL, real worker subprocesses, real HTTP
(uvicorn), a real SMTP sink: the chunks land on every worker, the run completes with its
totals, a worker SIGKILLed mid-chunk costs no duplicate email, and with no worker at all
the calls finish the run themselves."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, CronNotification, CronRunChunk
from tests.conftest import auth
from tests.support.notification_data import (
    ScriptedSmtp,
    recipients,
    scheduled_reminder_day,
    seed_travellers,
    seed_trips,
)
from tests.support.queue_workers import (
    WorkerProcess,
    empty_queue,
    queue_env,
    wait_for_workers,
)
from tests.support.servers import UvicornProcess

ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
pytestmark = [pytest.mark.slow, ON_POSTGRESQL]

log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)
notification_t = table_of(CronNotification)
CLOSED = (RunStatus.SUCCESS, RunStatus.WARNING, RunStatus.ERROR, RunStatus.ABANDONED)


@pytest.fixture
def sink() -> Iterator[ScriptedSmtp]:
    # A little latency per message, as a real provider has: a chunk lasts long enough to
    # be caught mid-way.
    server = ScriptedSmtp(delay=0.002).start()
    yield server
    server.stop()


@pytest.fixture
def fleet(db_url: str, engine: Engine, tmp_path: Path, sink: ScriptedSmtp
          ) -> Iterator[list[WorkerProcess]]:
    empty_queue(engine)
    env = queue_env(db_url, tmp_path, sink)
    workers = [WorkerProcess(env, f"w{i}", tmp_path).start() for i in (1, 2, 3)]
    try:
        wait_for_workers(engine, 3)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def call(url: str) -> httpx.Response:
    with httpx.Client(timeout=60) as http:
        return http.post(f"{url}/api/cron/trip-reminders",
                         headers={**auth(), "X-Cron-Source": "crontab"})


def wait_closed(engine: Engine, run_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = conn.execute(sa.select(log_t).where(log_t.c.run_id == run_id)).one()
        if row.status in CLOSED:
            return row
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {row.status} after {timeout:g} s")


def chunk_rows(engine: Engine, run_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(chunk_t).where(chunk_t.c.run_id == run_id)
                                 .order_by(chunk_t.c.seq)))


def test_chunks_spread_over_three_workers_and_the_run_completes_with_its_totals(
        db_url: str, engine: Engine, tmp_path: Path, sink: ScriptedSmtp,
        fleet: list[WorkerProcess]) -> None:
    # 300 trips of 6: with ranges of 200 (tests/support/small_chunks), nine count chunks
    # and nine plan chunks, run alongside one another, then nine id ranges of sends, side
    # by side too but on SMTP_MAX_CONNECTIONS=2 connections at most, and the closing sweep.
    travellers, stage = 1800, 9
    now = dt.datetime.now(dt.UTC)
    expected = seed_trips(engine, scheduled_reminder_day(now), now - dt.timedelta(days=30),
                          trips=300, per_trip=6)
    server = UvicornProcess(queue_env(db_url, tmp_path, sink, FUNCTION_MAX_DURATION="2"),
                            cwd=tmp_path).start()
    try:
        answer = call(server.url)
        assert answer.status_code in (200, 202), answer.text
        run_id = answer.json()["run_id"]
        row = wait_closed(engine, run_id, timeout=120)
    finally:
        server.stop()

    chunks = chunk_rows(engine, run_id)
    total = 3 * stage + 1
    assert len(chunks) == total and {c.status for c in chunks} == {"done"}
    assert [c.args.get("step") for c in chunks[:2 * stage]] == (
        ["count"] * stage + ["plan"] * stage)
    workers = {c.worker.split("@")[0] for c in chunks}
    # Every worker took chunks (the call, working as a bounded worker, may have too), and
    # the count and plan stages were shared out, not worked by one worker alone.
    assert {"w1", "w2", "w3"} <= {c.worker for c in chunks}, [c.worker for c in chunks]
    assert workers <= {"w1", "w2", "w3", "call"}
    assert len({c.worker for c in chunks[:2 * stage]}) >= 2, [c.worker for c in chunks]
    sends = chunks[2 * stage:-1]
    assert [c.args.get("step") for c in sends] == ["send"] * stage
    assert chunks[-1].args.get("step") == "sweep"
    # The send chunks went side by side on several workers: their intervals overlap; and
    # never on more connections at once than SMTP_MAX_CONNECTIONS, counted at the server.
    assert len({c.worker for c in sends}) >= 2, [c.worker for c in sends]
    assert any(a.started_at < b.ended_at and b.started_at < a.ended_at
               for i, a in enumerate(sends) for b in sends[i + 1:]), [
        (c.started_at, c.ended_at) for c in sends]
    assert sink.most_open == 2, sink.most_open
    assert (row.status, row.chunks_done, row.chunks_total) == ("success", total, total), (
        row.message)
    assert row.records_processed == travellers
    got = recipients(sink)
    assert set(got) == expected and set(got.values()) == {1}
    assert all(w.alive for w in fleet), [w.output()[-2000:] for w in fleet]


def test_a_worker_killed_mid_chunk_costs_no_duplicate_and_the_run_completes(
        db_url: str, engine: Engine, tmp_path: Path, sink: ScriptedSmtp,
        fleet: list[WorkerProcess]) -> None:
    travellers = 1500
    now = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(now),
                               now - dt.timedelta(days=30), travellers)
    server = UvicornProcess(queue_env(db_url, tmp_path, sink, FUNCTION_MAX_DURATION="1"),
                            cwd=tmp_path).start()
    by_name = {w.name: w for w in fleet}
    try:
        answer = call(server.url)
        assert answer.status_code in (200, 202), answer.text
        run_id = answer.json()["run_id"]
        # A worker caught half-way through a chunk: it has sent part of it, not all.
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            for chunk in chunk_rows(engine, run_id):
                if chunk.status != "done" and chunk.worker in by_name and chunk.seq >= 2:
                    with engine.connect() as conn:
                        sent = conn.execute(sa.select(sa.func.count()).select_from(
                            notification_t).where(notification_t.c.status == "sent")).scalar()
                    # Messages taken by the sink but not yet settled: the chunk is mid-way.
                    if len(sink.received) > (sent or 0) + 20:
                        victim = by_name[chunk.worker]
            time.sleep(0.02)
        assert victim is not None, "no worker was seen mid-chunk"
        victim.kill()
        killed = time.monotonic()
        row = wait_closed(engine, run_id, timeout=60)
        took = time.monotonic() - killed
    finally:
        server.stop()

    assert took < 60
    got = recipients(sink)
    assert max(got.values()) == 1, [a for a, n in got.items() if n > 1][:5]
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(notification_t.c.status, sa.func.count())
                                   .group_by(notification_t.c.status)).all())
    assert states.get("unconfirmed", 0) <= 1, states
    assert states.get("sent", 0) + states.get("unconfirmed", 0) == travellers, states
    assert set(got) | set() <= expected and len(got) >= travellers - 1
    assert row.status in (RunStatus.SUCCESS, RunStatus.WARNING), row.message
    assert row.chunks_done == row.chunks_total
    # The retry is in the survivors' logs: the stalled job went back to the queue.
    logs = "".join(w.output() for w in fleet if w is not victim)
    assert "stalled" in logs


def test_with_no_worker_the_calls_finish_a_queued_run_themselves(
        db_url: str, engine: Engine, tmp_path: Path, sink: ScriptedSmtp) -> None:
    """A Vercel-only deployment: queue mode, no worker process anywhere."""
    empty_queue(engine)
    travellers = 1000
    now = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(now),
                               now - dt.timedelta(days=30), travellers)
    server = UvicornProcess(queue_env(db_url, tmp_path, sink, FUNCTION_MAX_DURATION="3"),
                            cwd=tmp_path).start()
    answers = []
    try:
        for _ in range(30):
            answers.append(call(server.url))
            if answers[-1].status_code != 202:
                break
    finally:
        server.stop()
    codes = [a.status_code for a in answers]
    assert codes[-1] == 200 and set(codes[:-1]) <= {202}, answers[-1].text
    assert len(codes) >= 2  # the run outlived one call: the queue carried it over
    assert {a.json()["run_id"] for a in answers} == {answers[0].json()["run_id"]}
    final = answers[-1].json()
    assert (final["status"], final["records_processed"]) == ("success", travellers)
    got = recipients(sink)
    assert set(got) == expected and set(got.values()) == {1}
    chunks = chunk_rows(engine, final["run_id"])
    assert {c.worker.split("@")[0] for c in chunks} == {"call"}
