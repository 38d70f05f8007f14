"""subscription-sync cut at every chunk boundary ends as a run left whole (localstripe):
the same rows and history, Stripe untouched, one log row with every chunk done.

The reads are chunks too (id ranges of candidates, or the one list read), and the
downgrade brake waits for all of them: the write chunks come after it, so no write
happens before every subscription was read."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, SubscriptionHistory, UserSubscription
from tests.conftest import FixedClock
from tests.jobs.test_subscription_sync import NOW, World, _assert_repaired, _seed, _settings
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.stripe_servers import FaultProxy, localstripe, stripe_proxy

__all__ = ["localstripe", "stripe_proxy"]

pytestmark = pytest.mark.usefixtures("without_preconditions")

subs_t = table_of(UserSubscription)
history_t = table_of(SubscriptionHistory)
log_t = table_of(CronJobLog)
BATCH = 3  # subscriptions per write chunk: the 8 changes make 3 chunks, after 1 read chunk


@pytest.fixture
def world(localstripe: Any) -> World:
    return World(localstripe)


def _stripe(world: World, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ids = [row["stripe_subscription_id"] for row in rows.values()
           if str(row.get("stripe_subscription_id", "")).startswith("sub_")
           and not row["stripe_subscription_id"].startswith("sub_gone")]
    return {sub_id: {k: v for k, v in world.get(sub_id).items()
                     if k in ("status", "cancel_at_period_end", "current_period_end",
                              "canceled_at", "ended_at")} for sub_id in ids}


def _state(engine: Engine, run_id: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        local = sorted(tuple(r) for r in conn.execute(sa.select(subs_t)))
        history = sorted(
            (str(r.user_id), r.event_type, r.tier, r.status, str(r.stripe_subscription_id),
             str(r.event_timestamp), str(r.created_at),
             repr(sorted((k, v) for k, v in r.details.items() if k != "run_id")))
            for r in conn.execute(sa.select(history_t)))
        logged = [tuple(row) for row in conn.execute(
            sa.select(log_t.c.status, log_t.c.records_processed, log_t.c.chunks_done,
                      log_t.c.chunks_total).where(log_t.c.run_id == run_id))]
    return {"local": local, "history": history, "log": logged}


def _report(outcome: RunOutcome) -> dict[str, Any]:
    keep = ("checked", "changed", "changed_by_field", "missing_in_stripe", "deleted",
            "downgrades", "brake", "samples", "failed", "skipped_concurrent", "api_calls")
    return {"status": outcome.status, "records": outcome.records_processed,
            "message": outcome.message, **{k: outcome.details[k] for k in keep}}


@pytest.mark.parametrize("strategy", ["retrieve", "list"])
def test_a_run_cut_at_every_chunk_ends_as_a_whole_run(
        engine: Engine, db_url: str, tmp_path: Path, stripe_proxy: FaultProxy, world: World,
        strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _seed(engine, world)
    settings = _settings(db_url, tmp_path, stripe_proxy, world, batch_size=BATCH,
                         stripe_sync_strategy=strategy)
    with engine.connect() as conn:
        seeded = [dict(r) for r in conn.execute(sa.select(subs_t)).mappings()]
        seeded_history = [dict(r) for r in conn.execute(sa.select(history_t)).mappings()]
    in_stripe = _stripe(world, rows)
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)

    whole = runner.run("subscription-sync", trigger="cli")
    assert whole.status == RunStatus.SUCCESS, whole.message
    whole_state = _state(engine, whole.run_id)
    with engine.begin() as conn:  # the same rows again
        conn.execute(history_t.delete())
        conn.execute(subs_t.delete())
        conn.execute(subs_t.insert(), seeded)
        if seeded_history:
            conn.execute(history_t.insert(), seeded_history)

    dry = runner.run("subscription-sync", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)
    answers = run_to_the_end(runner, "subscription-sync", trigger="cli")

    # The read chunk, three write chunks, a call each; then one that closes the run.
    assert len(answers) == 5
    assert [a.status for a in answers[:-1]] == [RunStatus.PARTIAL] * 4
    assert [a.details["chunks_done"] for a in answers[:-1]] == [1, 2, 3, 4]
    assert [a.records_processed for a in answers[:-1]] == [0, 3, 6, 8]
    last = answers[-1]
    assert {a.run_id for a in answers} == {last.run_id}
    assert _report(last) == _report(whole)
    assert {k: v for k, v in _report(dry).items() if k != "message"} == {
        k: v for k, v in _report(last).items() if k != "message"}
    _assert_repaired(engine, world, rows, last)
    cut_state = _state(engine, last.run_id)
    assert cut_state == whole_state
    assert cut_state["log"] == [("success", 8, 4, 4)]
    assert _stripe(world, rows) == in_stripe  # read, never written


@pytest.mark.parametrize("strategy", ["retrieve", "list"])
def test_reads_that_do_not_fit_the_invocation_change_nothing(
        engine: Engine, db_url: str, tmp_path: Path, stripe_proxy: FaultProxy,
        world: World, strategy: str) -> None:
    """The brake must see every subscription before one is written: an invocation too
    short for a read chunk stops before any write.  A retrieve chunk pauses the run (the
    next call reads it again and goes on); the list read, which must fit one invocation,
    ends the run changing nothing, and says so."""
    rows = _seed(engine, world)
    with engine.connect() as conn:
        before = sorted(tuple(r) for r in conn.execute(sa.select(subs_t)))
    settings = _settings(db_url, tmp_path, stripe_proxy, world, batch_size=BATCH,
                         stripe_sync_strategy=strategy)
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)

    outcome = runner.run("subscription-sync", trigger="cli", until=time.monotonic() + 5)

    with engine.connect() as conn:
        assert sorted(tuple(r) for r in conn.execute(sa.select(subs_t))) == before
        assert conn.execute(sa.select(sa.func.count()).select_from(history_t)).scalar() == 0
    if strategy == "list":
        assert outcome.status == RunStatus.WARNING
        assert "nothing was changed" in (outcome.message or "")
        return
    assert outcome.status == RunStatus.PARTIAL
    assert (outcome.details["chunks_done"], outcome.details["chunks_total"]) == (0, 1)
    finished = runner.run("subscription-sync", trigger="cli")
    assert finished.run_id == outcome.run_id
    assert finished.status == RunStatus.SUCCESS, finished.message
    _assert_repaired(engine, world, rows, finished)
