"""The rules around a `partial` run, on a job made of chunks that touches nothing else:
which call continues it, what happens to one nobody continued, how a dead run's chunks are
taken up, and what a group answers while a member is partial."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.chunks import Chunked, Plan
from app.core.context import JobContext, JobResult
from app.core.groups import run_group
from app.core.registry import GroupSpec, JobSpec, RetryPolicy
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLease, CronJobLog, CronRunChunk
from tests.conftest import FixedClock
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end

log_t, chunk_t, lease_t = table_of(CronJobLog), table_of(CronRunChunk), table_of(CronJobLease)
SLOT = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)


class Counted:
    """Five chunks; remembers which (run, chunk) it worked on."""

    def __init__(self) -> None:
        self.worked: list[tuple[uuid.UUID, int]] = []

    def plan(self, ctx: JobContext) -> Plan:
        return Plan([{"n": n} for n in range(5)], {"planned_at": ctx.now.isoformat()})

    def work(self, ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        self.worked.append((ctx.run_id, int(args["n"])))
        return {"records": 10, "seen": [args["n"]]}

    def finish(self, ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]
               ) -> JobResult:
        return JobResult(records_processed=totals["records"],
                         message=f"seen {sorted(totals['seen'])}", details=notes)


def _spec(name: str, job: Counted) -> JobSpec:
    return JobSpec(name=name, schedule="0 3 * * *", description=name,
                   func=Chunked(job.plan, job.work, job.finish), chunked=True,
                   retry=RetryPolicy(attempts=1))


@pytest.fixture
def job() -> Counted:
    return Counted()


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(log_t.c.slot, log_t.c.status, log_t.c.chunks_done, log_t.c.chunks_total,
                      log_t.c.records_processed).order_by(log_t.c.id))]


def test_each_call_continues_the_slots_run_and_never_redoes_a_chunk(
        engine: Engine, settings: Settings, job: Counted,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cut_everywhere(monkeypatch)
    runner = Runner(settings, engine, clock=FixedClock(SLOT + dt.timedelta(minutes=5)),
                    jobs={"counted": _spec("counted", job)})
    answers = run_to_the_end(runner, "counted")
    assert [a.status for a in answers] == [RunStatus.PARTIAL] * 4 + [RunStatus.SUCCESS]
    assert [a.http_status for a in answers] == [202] * 4 + [200]
    assert [a.details.get("chunks_done") for a in answers[:-1]] == [1, 2, 3, 4]
    assert [a.records_processed for a in answers] == [10, 20, 30, 40, 50]
    assert answers[-1].message == "seen [0, 1, 2, 3, 4]"
    assert [n for _, n in job.worked] == [0, 1, 2, 3, 4]
    assert len({run for run, _ in job.worked}) == 1
    assert _rows(engine) == [(SLOT, "success", 5, 5, 50)]
    # The slot is done: another delivery is a duplicate and works nothing.
    assert runner.run("counted", trigger="crontab").status == RunStatus.DUPLICATE
    assert len(job.worked) == 5


def test_a_partial_run_nobody_continued_is_abandoned_when_the_next_slot_runs(
        engine: Engine, settings: Settings, job: Counted,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cut_everywhere(monkeypatch)
    clock = FixedClock(SLOT + dt.timedelta(minutes=5))
    runner = Runner(settings, engine, clock=clock, jobs={"counted": _spec("counted", job)})
    assert runner.run("counted", trigger="crontab").status == RunStatus.PARTIAL
    clock.advance(days=1)
    assert runner.run("counted", trigger="crontab").status == RunStatus.PARTIAL
    rows = _rows(engine)
    assert rows[0][:2] == (SLOT, "abandoned") and rows[1][:2] == (
        SLOT + dt.timedelta(days=1), "partial")
    with engine.connect() as conn:
        message = conn.execute(sa.select(log_t.c.message).order_by(log_t.c.id)).first()
    assert message is not None and "left partial, not continued" in message[0]


def test_a_dead_runs_chunks_are_taken_up_not_redone(
        engine: Engine, settings: Settings, job: Counted,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cut_everywhere(monkeypatch)
    clock = FixedClock(SLOT + dt.timedelta(minutes=5))
    runner = Runner(settings, engine, clock=clock, jobs={"counted": _spec("counted", job)})
    first = runner.run("counted", trigger="crontab")
    second = runner.run("counted", trigger="crontab")
    assert (first.status, second.status, first.run_id) == (
        RunStatus.PARTIAL, RunStatus.PARTIAL, second.run_id)
    # The third invocation's process dies mid-chunk: its row stays `running`, its lease
    # held, its heartbeat stops.
    with engine.begin() as conn:
        conn.execute(log_t.update().where(log_t.c.run_id == first.run_id).values(
            status=RunStatus.RUNNING, heartbeat_at=clock.now))
        conn.execute(lease_t.update().where(lease_t.c.task == "counted").values(
            holder=first.run_id, expires_at=clock.now + dt.timedelta(seconds=60)))
    busy = runner.run("counted", trigger="crontab")
    assert busy.status == RunStatus.DUPLICATE and busy.run_id == first.run_id
    clock.advance(seconds=61)
    answers = run_to_the_end(runner, "counted")
    heir = answers[-1].run_id
    assert heir != first.run_id and answers[-1].status == RunStatus.SUCCESS
    # Chunks 0 and 1 were done by the dead run: the heir did 2, 3 and 4, once each.
    assert [n for run, n in job.worked if run == heir] == [2, 3, 4]
    assert answers[-1].records_processed == 50 and answers[-1].message == (
        "seen [0, 1, 2, 3, 4]")
    rows = _rows(engine)
    assert [r[1] for r in rows] == ["abandoned", "success"]
    assert rows[1][2:] == (5, 5, 50)


def test_a_group_with_a_partial_member_answers_partial_and_the_next_call_goes_on(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    cut_everywhere(monkeypatch)
    one, two = Counted(), Counted()
    jobs = {"one": _spec("one", one), "two": _spec("two", two)}
    runner = Runner(settings, engine, clock=FixedClock(SLOT + dt.timedelta(minutes=5)),
                    jobs=jobs)
    group = GroupSpec(name="both", schedule="0 3 * * *", members=("one", "two"),
                      description="both")
    answers = []
    for _ in range(10):
        outcome = run_group(runner, group, trigger="crontab")
        answers.append(outcome)
        if outcome.status != RunStatus.PARTIAL:
            break
    assert [a.http_status for a in answers[:-1]] == [202] * (len(answers) - 1)
    assert answers[-1].status == RunStatus.SUCCESS
    assert sorted(n for _, n in one.worked) == sorted(n for _, n in two.worked) == [
        0, 1, 2, 3, 4]
