"""A send chunk's own hand-over cursor: the send chunks of one run go side by side (queue
workers), so each reads and settles only its own id range, and only its latest attempt may
hand a message over.

Like tests/mail/test_reminders_handover.py, these set the database to the exact state a
crash leaves (a fault at a precise moment), then let the real job and a real SMTP server
finish.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.context import JobContext
from app.core.runner import Runner
from app.db import table_of
from app.jobs import trip_reminders
from app.mail import delivery
from app.mail.handover import Lane, handover_log
from app.models import CronRunChunk
from tests.conftest import FixedClock, make_settings, rows
from tests.mail.test_reminders_handover import NOW, START, _log_row, _plan_only
from tests.support.notification_data import recipients, seed_travellers
from tests.support.servers import SmtpSink

chunk_t = table_of(CronRunChunk)


def _chunk(engine: Engine, run_id: uuid.UUID, seq: int, args: dict[str, Any], *,
           cursor: int | None = None, owner: uuid.UUID | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(chunk_t.insert().values(
            run_id=run_id, seq=seq, args=args, status="pending", records=0,
            mail_cursor=cursor, mail_owner=owner))


def _statuses(engine: Engine, ids: list[int]) -> list[str]:
    found = dict(rows(engine, "SELECT id, status FROM cron_notification"))
    return [found[i] for i in ids]


def _cursor(engine: Engine, run_id: uuid.UUID, seq: int) -> int | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(chunk_t.c.mail_cursor).where(
            chunk_t.c.run_id == run_id, chunk_t.c.seq == seq)).scalar()


def test_only_the_chunks_latest_attempt_moves_its_cursor_and_only_while_the_run_is_open(
        engine: Engine) -> None:
    run_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _log_row(engine, run_id, "partial")
    _chunk(engine, run_id, 3, {"step": "send", "first": 1, "last": 99}, owner=first)
    with handover_log(engine, Lane(run_id, 3, first)) as old:
        assert old.claim(41).result() is True
        assert _cursor(engine, run_id, 3) == 41
        # A later attempt takes the chunk over: the earlier one cannot hand over any more.
        with engine.begin() as conn:
            conn.execute(chunk_t.update().values(mail_owner=second, mail_cursor=None))
        assert old.claim(42).result() is False
        with handover_log(engine, Lane(run_id, 3, second)) as new:
            assert new.claim(43).result() is True
            assert _cursor(engine, run_id, 3) == 43
            # The run closed as abandoned: no attempt of any chunk hands over any more.
            with engine.begin() as conn:
                conn.exec_driver_sql("UPDATE cron_job_log SET status = 'abandoned'")
            assert new.claim(44).result() is False
    assert _cursor(engine, run_id, 3) == 43
    assert rows(engine, "SELECT mail_cursor FROM cron_job_log") == [(None,)]


def test_a_retried_send_chunk_settles_its_own_range_and_leaves_its_neighbours_alone(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    seed_travellers(engine, START, NOW, 10)
    run_id = uuid.uuid4()
    ids = _plan_only(engine, db_url, tmp_path, run_id)
    by_id = dict(rows(engine, "SELECT id, recipient FROM cron_notification"))
    _log_row(engine, run_id, "partial")
    # Chunk 0 is being sent by another worker right now (its cursor at ids[2]); chunk 1's
    # attempt died having had its 250 for ids[5] and ids[6], handing over ids[7].
    alive = uuid.uuid4()
    _chunk(engine, run_id, 0, {"step": "send", "first": ids[0], "last": ids[4]},
           cursor=ids[2], owner=alive)
    _chunk(engine, run_id, 1, {"step": "send", "first": ids[5], "last": ids[9]},
           cursor=ids[7], owner=uuid.uuid4())

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, mail_retry_wait=0.0)
    ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=run_id,
                     task="trip-reminders", slot=NOW.replace(second=0))
    trip_reminders.run.run_chunk(ctx, 1, {"step": "send", "first": ids[5], "last": ids[9]})

    # Chunk 1: what the dead attempt handed over is not sent again; the rest is.
    assert set(recipients(smtp_sink)) == {by_id[ids[8]], by_id[ids[9]]}
    assert _statuses(engine, ids[5:]) == ["sent", "sent", "unconfirmed", "sent", "sent"]
    # Chunk 0's rows lie below chunk 1's cursor, and are still its own to send.
    assert _statuses(engine, ids[:5]) == ["pending"] * 5
    assert _cursor(engine, run_id, 0) == ids[2]
    assert _cursor(engine, run_id, 1) is None


def test_a_dead_runs_send_chunks_are_each_read_off_their_own_cursor(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    people = seed_travellers(engine, START, NOW, 10)
    dead = uuid.uuid4()
    ids = _plan_only(engine, db_url, tmp_path, dead)
    by_id = dict(rows(engine, "SELECT id, recipient FROM cron_notification"))
    _log_row(engine, dead, "abandoned")
    # Two chunks were sending side by side when the run died: chunk 0 had its 250 for
    # ids[0..1] and was handing over ids[2]; chunk 1 likewise for ids[5..6] and ids[7].
    _chunk(engine, dead, 0, {"step": "send", "first": ids[0], "last": ids[4]},
           cursor=ids[2], owner=uuid.uuid4())
    _chunk(engine, dead, 1, {"step": "send", "first": ids[5], "last": ids[9]},
           cursor=ids[7], owner=uuid.uuid4())
    held = {by_id[i] for i in (*ids[:3], *ids[5:8])}

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, mail_retry_wait=0.0)
    outcome = Runner(settings, engine, clock=FixedClock(NOW)).run("trip-reminders")

    assert outcome.status == "warning", outcome.message  # the in-flight ones are reported
    assert "2 unconfirmed" in outcome.message, outcome.message
    got = recipients(smtp_sink)
    assert set(got) == people - held and set(got.values()) == {1}
    assert _statuses(engine, ids) == (["sent", "sent", "unconfirmed", "sent", "sent"] * 2)
    assert (_cursor(engine, dead, 0), _cursor(engine, dead, 1)) == (None, None)


def test_a_mail_runs_send_stage_is_id_ranges_side_by_side_then_one_sweep(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed_travellers(engine, START, NOW, 7)
    run_id = uuid.uuid4()
    ids = _plan_only(engine, db_url, tmp_path, run_id)
    settings = make_settings(db_url, tmp_path)
    ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=run_id,
                     task="trip-reminders")
    stage = delivery.send_chunks(ctx, trip_reminders.KIND, 3)
    assert stage == [{"step": "send", "first": ids[0], "last": ids[2]},
                     {"step": "send", "first": ids[3], "last": ids[5]},
                     {"step": "send", "first": ids[6], "last": ids[6]},
                     {"step": "sweep", "first": None, "last": None}]
    job = trip_reminders.run
    assert [job.alongside(args) for args in stage] == [True, True, True, False]
    assert all(job.mails(args) for args in stage)
