"""trip-reminders cut at every chunk boundary (one chunk per call) ends as an uncut run
does: the same reminders sent, once each, the same log row totals, one row per run."""

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
from app.models import CronJobLease, CronJobLog, CronNotification, CronRunChunk
from tests.conftest import FixedClock
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.notification_data import recipients, seed_travellers
from tests.support.servers import SmtpSink

TRAVELLERS = 1100  # two id ranges of 1000 and the closing sweep


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
    assert [a.status for a in answers] == [RunStatus.PARTIAL] * 2 + [RunStatus.SUCCESS]
    assert len({a.run_id for a in answers}) == 1
    assert pieces == whole
    assert set(whole["mail"].values()) == {1} and len(whole["mail"]) == TRAVELLERS
    assert whole["runs"][0][:4] == ("success", TRAVELLERS, 3, 3)
