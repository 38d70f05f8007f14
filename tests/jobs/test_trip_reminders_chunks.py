"""trip-reminders cut at every chunk boundary (one chunk per call) ends as an uncut run
does: the same reminders sent, once each, the same log row totals, one row per run.  Its
planning is cut too (count, brake, plan by trip ranges), so no call's work grows with the
day's travellers, and a brake decided after several calls still leaves nothing planned."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.jobs import trip_reminders
from app.models import CronJobLease, CronJobLog, CronNotification, CronRunChunk
from tests.conftest import FixedClock
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.notification_data import recipients, seed_travellers, seed_trips
from tests.support.servers import SmtpSink

TRAVELLERS = 1100  # one trip: a count chunk, a plan chunk, then two id ranges of 1000 and
# the closing sweep
CHUNKS = 5


def _state(engine: Engine, sink: SmtpSink) -> dict[str, Any]:
    n, log_t = table_of(CronNotification), table_of(CronJobLog)
    with engine.connect() as conn:
        notes = dict(conn.execute(sa.select(n.c.dedupe_key, n.c.status)).all())
        runs = [tuple(r) for r in conn.execute(sa.select(
            log_t.c.status, log_t.c.records_processed, log_t.c.chunks_done,
            log_t.c.chunks_total, log_t.c.message))]
    return {"notifications": notes, "runs": runs, "mail": dict(recipients(sink))}


def _forget_runs(engine: Engine, sink: SmtpSink) -> None:
    with engine.begin() as conn:
        for model in (CronNotification, CronRunChunk, CronJobLog, CronJobLease):
            conn.execute(table_of(model).delete())
    with sink.lock:
        sink.received.clear()


def test_a_run_cut_at_every_chunk_ends_as_the_uncut_run(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = dt.datetime(2026, 11, 20, 8, 5, tzinfo=dt.UTC)
    seed_travellers(engine, at.date() + dt.timedelta(days=7), at - dt.timedelta(days=30),
                    TRAVELLERS)
    settings = settings.model_copy(update={
        "smtp_host": smtp_sink.host, "smtp_port": smtp_sink.port, "smtp_security": "none",
        "trip_reminders_send_brake_count": 100_000})
    runner = Runner(settings, engine, clock=FixedClock(at))

    [uncut] = run_to_the_end(runner, "trip-reminders")
    whole = _state(engine, smtp_sink)
    _forget_runs(engine, smtp_sink)
    cut_everywhere(monkeypatch)
    answers = run_to_the_end(runner, "trip-reminders")
    pieces = _state(engine, smtp_sink)

    assert uncut.status == RunStatus.SUCCESS and uncut.records_processed == TRAVELLERS
    # Cut after every chunk: a call per chunk, and one more that only closes the run.
    assert [a.status for a in answers] == [RunStatus.PARTIAL] * CHUNKS + [RunStatus.SUCCESS]
    assert len({a.run_id for a in answers}) == 1
    assert pieces == whole
    assert set(whole["mail"].values()) == {1} and len(whole["mail"]) == TRAVELLERS
    assert whole["runs"][0][:4] == ("success", TRAVELLERS, CHUNKS, CHUNKS)


def _chunk_steps(engine: Engine) -> list[tuple[str, str]]:
    chunk_t = table_of(CronRunChunk)
    with engine.connect() as conn:
        return [(str(args.get("step", "send")), str(status)) for args, status in conn.execute(
            sa.select(chunk_t.c.args, chunk_t.c.status).order_by(chunk_t.c.seq))]


def _ledger_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count())
                                .select_from(table_of(CronNotification))).scalar_one())


def test_planning_is_cut_by_trip_ranges_and_counts_before_it_writes(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = dt.datetime(2026, 11, 20, 8, 5, tzinfo=dt.UTC)
    expected = seed_trips(engine, at.date() + dt.timedelta(days=7),
                          at - dt.timedelta(days=30), trips=12, per_trip=5)
    monkeypatch.setattr(trip_reminders, "RANGE_SIZE", 20)  # four trips a range
    settings = settings.model_copy(update={**smtp_sink.settings,
                                           "trip_reminders_send_brake_count": 100_000})
    runner = Runner(settings, engine, clock=FixedClock(at))
    cut_everywhere(monkeypatch)

    first = runner.run("trip-reminders", trigger="crontab")
    # One call counted one range of trips and wrote nothing to the ledger.
    assert first.status == RunStatus.PARTIAL
    assert _chunk_steps(engine) == [("count", "done"), ("count", "pending"),
                                    ("count", "pending")]
    assert _ledger_rows(engine) == 0
    answers = [first, *run_to_the_end(runner, "trip-reminders")]

    steps = _chunk_steps(engine)
    assert [step for step, _ in steps][:6] == ["count"] * 3 + ["plan"] * 3
    assert {status for _, status in steps} == {"done"}
    assert answers[-1].status == RunStatus.SUCCESS
    assert answers[-1].records_processed == len(expected)
    assert len({a.run_id for a in answers}) == 1
    assert recipients(smtp_sink) == {address: 1 for address in expected}


def test_a_brake_decided_after_counts_over_several_calls_plans_nothing(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = dt.datetime(2026, 11, 20, 8, 5, tzinfo=dt.UTC)
    seed_trips(engine, at.date() + dt.timedelta(days=7), at - dt.timedelta(days=30),
               trips=12, per_trip=5)
    monkeypatch.setattr(trip_reminders, "RANGE_SIZE", 20)
    settings = settings.model_copy(update={**smtp_sink.settings,
                                           "trip_reminders_send_brake_count": 10})
    runner = Runner(settings, engine, clock=FixedClock(at))
    dry = runner.run("trip-reminders", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)

    answers = run_to_the_end(runner, "trip-reminders")

    assert [a.status for a in answers] == [RunStatus.PARTIAL] * 3 + [RunStatus.ERROR]
    assert "safety brake: would email trip reminders" in (answers[-1].message or "")
    assert "60 of 0" in (answers[-1].message or "")
    assert dry.status == RunStatus.ERROR and dry.message == answers[-1].message
    assert _ledger_rows(engine) == 0 and recipients(smtp_sink) == {}
