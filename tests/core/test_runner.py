"""A second delivery of a slot while the first is starting is a duplicate naming the run
that holds it, never a 409 with no run (curl treats 409 as failure)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec
from app.core.runner import Runner, RunOutcome
from tests.conftest import FixedClock, rows


def _quick(_ctx: JobContext) -> JobResult:
    return JobResult(records_processed=1, message="done")


JOBS = {"quick": JobSpec("quick", "0 3 * * *", _quick, "test job")}


def _runner(settings: Settings, engine: Engine, clock: FixedClock) -> Runner:
    return Runner(settings, engine, clock=clock, jobs=JOBS)


@pytest.fixture
def paused_after_claim(monkeypatch: pytest.MonkeyPatch
                       ) -> tuple[threading.Event, threading.Event]:
    """The first run to reach the job waits there until the test lets it go: the precise
    moment a second delivery used to find the lease taken and no run to name."""
    reached, release = threading.Event(), threading.Event()
    original: Callable[..., RunOutcome] = Runner._execute

    def execute(self: Runner, *args: Any, **kwargs: Any) -> RunOutcome:
        if not reached.is_set():
            reached.set()
            assert release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "_execute", execute)
    return reached, release


@pytest.mark.parametrize("trigger", ["vercel", "crontab", "github-actions"])
def test_a_delivery_arriving_while_the_first_starts_is_a_named_duplicate(
    settings: Settings, engine: Engine, clock: FixedClock, trigger: str,
    paused_after_claim: tuple[threading.Event, threading.Event],
) -> None:
    reached, release = paused_after_claim
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_runner(settings, engine, clock).run, "quick", trigger=trigger)
        assert reached.wait(30)
        second = _runner(settings, engine, clock).run("quick", trigger=trigger)
        release.set()
        winner = first.result(30)
    assert winner.status == "success"
    assert second.status == "duplicate", second
    assert second.http_status == 200
    assert second.run_id == winner.run_id
    assert second.slot == winner.slot


def test_a_manual_run_colliding_with_a_live_run_is_409_naming_it(
    settings: Settings, engine: Engine, clock: FixedClock,
    paused_after_claim: tuple[threading.Event, threading.Event],
) -> None:
    reached, release = paused_after_claim
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_runner(settings, engine, clock).run, "quick", trigger="vercel")
        assert reached.wait(30)
        manual = _runner(settings, engine, clock).run("quick", trigger="cli")
        forced = _runner(settings, engine, clock).run("quick", trigger="crontab", force=True)
        release.set()
        winner = first.result(30)
    for outcome in (manual, forced):
        assert (outcome.status, outcome.http_status) == ("running", 409)
        assert outcome.run_id == winner.run_id


def test_many_concurrent_deliveries_are_one_run_and_named_duplicates(
    settings: Settings, engine: Engine, clock: FixedClock,
) -> None:
    deliveries = 24
    barrier = threading.Barrier(deliveries)

    def deliver(_i: int) -> RunOutcome:
        runner = _runner(settings, engine, clock)
        barrier.wait()
        return runner.run("quick", trigger="vercel")

    for _round in range(3):
        clock.advance(days=1)
        with ThreadPoolExecutor(deliveries) as pool:
            outcomes = list(pool.map(deliver, range(deliveries)))
        statuses = sorted(o.status for o in outcomes)
        assert statuses == ["duplicate"] * (deliveries - 1) + ["success"], statuses
        [winner] = [o for o in outcomes if o.status == "success"]
        assert {o.run_id for o in outcomes} == {winner.run_id}
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 3
