"""promo-cleanup cut at every chunk boundary ends as a run left whole: the same codes,
redemptions and archive, the same figures and samples, one log row with every chunk done."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import chunks
from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.jobs import promo_cleanup
from app.models import CronJobLog, CronRunChunk
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock
from tests.jobs.test_promo_cleanup import (
    DAY,
    NOW,
    _archived_rows,
    _bulk_codes,
    _seed,
    _tables,
    archive_t,
    codes_t,
    redemptions_t,
)
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end

pytestmark = pytest.mark.usefixtures("without_preconditions")

log_t = table_of(CronJobLog)
chunk_t = table_of(CronRunChunk)
BATCH = 4  # codes per chunk (one batch each)


def _world(engine: Engine) -> None:
    """Every step has work in several ranges: counts to raise and to lower, codes to
    delete and to deactivate, archived rows to purge."""
    _seed(engine)
    app = AppWriter(engine)
    user = app.sign_up("carol@example.com", at=NOW - 400 * DAY)
    over = app.promo_code("OVERCOUNTED", tier="premium", at=NOW - 30 * DAY, used_count=3)
    app.redeem(user, over, NOW - 2 * DAY, count_use=False)  # 1 row, count 3: lowered to 1
    told = app.promo_code("HISTORY_ONLY", tier="ai", at=NOW - 400 * DAY,
                          expires_at=NOW - 200 * DAY)
    app.redeem(user, told, NOW - 300 * DAY, record_row=False, count_use=False)  # kept
    _bulk_codes(engine, "OLD", 9, expires_at=NOW - 200 * DAY)  # deleted, archived
    _bulk_codes(engine, "LAPSED", 7, expires_at=NOW - 5 * DAY, tier="ai")  # deactivated
    _bulk_codes(engine, "LIVE", 6, expires_at=NOW + 50 * DAY)  # kept as they are
    _archived_rows(engine, [40, 35, 3])


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {t.name: [dict(r) for r in conn.execute(sa.select(t)).mappings()]
                for t in (codes_t, redemptions_t, archive_t)}


def _put_back(engine: Engine, snapshot: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as conn:
        for t in (archive_t, redemptions_t, codes_t):
            conn.execute(t.delete())
        for t in (codes_t, redemptions_t, archive_t):
            if snapshot[t.name]:
                conn.execute(t.insert(), snapshot[t.name])


def _state(engine: Engine, run_id: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        archive = sorted((r.job_name, r.source_table, r.row_key, str(r.archived_at))
                         for r in conn.execute(sa.select(archive_t)))
        logged = [tuple(row) for row in conn.execute(
            sa.select(log_t.c.status, log_t.c.records_processed, log_t.c.chunks_done,
                      log_t.c.chunks_total).where(log_t.c.run_id == run_id))]
    return {**_tables(engine), "archive": archive, "log": logged}


def _unbraked(settings: Settings) -> Settings:
    """Batches of BATCH codes, complete redemption rows, brakes out of the way."""
    return settings.model_copy(update={
        "batch_size": BATCH, "promo_redemption_rows_complete": True,
        "promo_cleanup_delete_brake_count": 1000, "promo_cleanup_deactivate_brake_count": 1000,
        "promo_cleanup_lower_brake_count": 1000})


def _report(outcome: RunOutcome) -> dict[str, Any]:
    return {"status": outcome.status, "records": outcome.records_processed,
            "message": outcome.message,
            **{key: outcome.details[key] for key in ("steps", "samples", "by_tier",
                                                     "brakes", "counted_without_rows")}}


def test_a_run_cut_at_every_chunk_ends_as_a_whole_run(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _unbraked(settings)
    monkeypatch.setattr(promo_cleanup, "CHUNK_BATCHES", 1)
    _world(engine)
    seeded = _snapshot(engine)
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)

    whole = runner.run("promo-cleanup", trigger="cli")
    assert whole.status == RunStatus.SUCCESS, whole.message
    whole_state = _state(engine, whole.run_id)
    _put_back(engine, seeded)

    dry = runner.run("promo-cleanup", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)
    answers = run_to_the_end(runner, "promo-cleanup", trigger="cli")

    codes = len(seeded["promo_codes"])
    ranges = codes // BATCH + 1
    assert len(answers) == ranges + 1  # every key range, then the archive's purge
    assert {a.status for a in answers[:-1]} == {RunStatus.PARTIAL}
    assert [a.details["chunks_done"] for a in answers[:-1]] == list(range(1, ranges + 1))
    assert {a.run_id for a in answers} == {answers[-1].run_id}
    last = answers[-1]
    assert _report(last) == _report(whole)
    assert {k: v for k, v in _report(dry).items() if k != "message"} == {
        k: v for k, v in _report(last).items() if k != "message"}
    assert last.details["steps"] == {"used_counts_raised": 1, "codes_deleted": 10,
                                     "codes_deactivated": 13, "used_counts_lowered": 1,
                                     "archive_rows_purged": 2}
    cut_state = _state(engine, last.run_id)
    assert cut_state == whole_state
    assert cut_state["log"] == [("success", 25, ranges + 1, ranges + 1)]
    assert "HISTORY_ONLY" in {row[1] for row in cut_state["promo_codes"].values()}


class _Killed(BaseException):
    """The process dies: right after the chunk's transaction committed, before anything
    else (the driver's own done-mark) is written."""


def test_a_chunk_whose_process_dies_after_its_commit_keeps_its_counts(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _unbraked(settings)
    monkeypatch.setattr(promo_cleanup, "CHUNK_BATCHES", 1000)  # one range: every code
    _world(engine)

    def die(*_args: object) -> None:
        raise _Killed

    monkeypatch.setattr(chunks, "_done", die)
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)
    with pytest.raises(_Killed):
        runner.run("promo-cleanup", trigger="cli")

    # What the dead process did is on record with the chunk, as the run that takes the
    # slot up inherits it (app/core/chunks.py `inherit`): done, with its counts.
    with engine.connect() as conn:
        chunk = conn.execute(sa.select(chunk_t).where(chunk_t.c.seq == 0)).one()
        done = conn.execute(sa.select(log_t.c.chunks_done)).scalar_one()
    assert (chunk.status, chunk.records, done) == ("done", 25, 1)
    assert chunk.result["steps"] == {"used_counts_raised": 1, "codes_deleted": 10,
                                     "codes_deactivated": 13, "used_counts_lowered": 1}
