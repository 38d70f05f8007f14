"""user-engagement cut at every chunk boundary ends as a run left whole: the same emails,
each inactive user's exactly once, the same ledger, metrics and run log totals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.jobs import user_engagement
from app.mail.ledger import notifications
from app.models import CronEngagementMetrics, CronJobLog
from tests.conftest import FixedClock, make_settings
from tests.jobs.test_user_engagement import EMAILED, NOW, _seed
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.notification_data import recipients
from tests.support.servers import SmtpSink

log_t = table_of(CronJobLog)
metrics_t = table_of(CronEngagementMetrics)


def _state(engine: Engine, run_id: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        ledger = sorted(tuple(row) for row in conn.execute(
            sa.select(notifications.c.dedupe_key, notifications.c.recipient,
                      notifications.c.status, notifications.c.attempts)))
        metrics = [tuple(row) for row in conn.execute(sa.select(
            metrics_t.c.month, metrics_t.c.active_users, metrics_t.c.inactive_users,
            metrics_t.c.emails_sent, metrics_t.c.emails_failed, metrics_t.c.opted_out,
            metrics_t.c.returned_users))]
        logged = [tuple(row) for row in conn.execute(
            sa.select(log_t.c.status, log_t.c.records_processed, log_t.c.chunks_done,
                      log_t.c.chunks_total).where(log_t.c.run_id == run_id))]
    return {"ledger": ledger, "metrics": metrics, "log": logged}


def _forget_the_campaign(engine: Engine, sink: SmtpSink) -> None:
    """The same data again: the job only reads users, so its own ledger and metrics are
    all a run leaves behind."""
    with engine.begin() as conn:
        conn.execute(notifications.delete())
        conn.execute(metrics_t.delete())
    with sink.lock:
        sink.received.clear()


@pytest.fixture
def mailing(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return make_settings(db_url, tmp_path, **smtp_sink.settings)


def test_a_run_cut_at_every_chunk_ends_as_a_whole_run(
        engine: Engine, mailing: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(user_engagement, "CHUNK_EMAILS", 1)  # a chunk per email
    _seed(engine)
    runner = Runner(mailing, engine, clock=FixedClock(NOW), sleep=lambda _s: None)

    whole = runner.run("user-engagement", trigger="cli")
    assert whole.status == RunStatus.SUCCESS, whole.message
    whole_mail = recipients(smtp_sink)
    whole_state = _state(engine, whole.run_id)
    _forget_the_campaign(engine, smtp_sink)

    dry = runner.run("user-engagement", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)
    answers: list[RunOutcome] = run_to_the_end(runner, "user-engagement", trigger="cli")

    # A count chunk and a plan chunk (one range of users), four emails a chunk each, then
    # the closing sweep: an answer per chunk, and one that closes the run.
    assert len(answers) == 8
    assert [a.status for a in answers[:-1]] == [RunStatus.PARTIAL] * 7
    assert [a.details["chunks_done"] for a in answers[:-1]] == [1, 2, 3, 4, 5, 6, 7]
    last = answers[-1]
    assert {a.run_id for a in answers} == {last.run_id}
    assert (last.status, last.records_processed, last.message) == (
        whole.status, whole.records_processed, whole.message)
    assert dry.records_processed == last.records_processed == len(EMAILED)

    got = recipients(smtp_sink)
    assert set(got) == EMAILED and set(got.values()) == {1}
    assert got == whole_mail
    cut_state = _state(engine, last.run_id)
    assert cut_state == whole_state
    assert cut_state["log"] == [("success", len(EMAILED), 7, 7)]


def test_counted_over_several_calls_the_brake_still_plans_nothing(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The count is cut by user-id ranges, one per call here; the brake waits for all of
    it, and when it trips nothing was planned and nobody emailed; the dry run said so."""
    monkeypatch.setattr(user_engagement, "RANGE_SIZE", 2)
    _seed(engine)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             user_engagement_send_brake_count=1,
                             user_engagement_send_brake_share=0.01)
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)
    dry = runner.run("user-engagement", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)

    answers = run_to_the_end(runner, "user-engagement", trigger="cli")

    with engine.connect() as conn:
        users = int(conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one())
        planned = int(conn.execute(sa.select(sa.func.count()).select_from(notifications)
                                   ).scalar_one())
    # A count chunk per two users, one call each, and the open-ended range past the last
    # bound (users signed up after the split fall in it).
    ranges = users // 2 + 1
    assert [a.status for a in answers] == [RunStatus.PARTIAL] * ranges + [RunStatus.ERROR]
    last = answers[-1]
    assert (last.message or "").startswith("safety brake: would email inactive users")
    assert f"{len(EMAILED)} of {users}" in (last.message or "")
    assert dry.status == RunStatus.ERROR and dry.message == last.message
    assert planned == 0 and recipients(smtp_sink) == {}
