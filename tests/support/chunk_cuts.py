"""Runs cut at every chunk boundary (app/core/chunks.py), for the tests that compare them
with runs left whole.

`cut_everywhere` makes every invocation stop after one chunk, as a tiny time budget would,
without starving the job's outbound calls of time (a budget that small would): the one
fault no local server can produce at a precise moment.  `run_to_the_end` then calls the
runner again, as a crontab loop or a redelivery would, until the run is no longer
`partial`, and returns every answer.
"""

from __future__ import annotations

import pytest

from app.core import chunks
from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus

MAX_CALLS = 500


def cut_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "has_room", lambda _ctx, _longest: False)


def run_to_the_end(runner: Runner, task: str, *, trigger: str = "crontab",
                   **kwargs: object) -> list[RunOutcome]:
    answers: list[RunOutcome] = []
    for _ in range(MAX_CALLS):
        outcome = runner.run(task, trigger=trigger, **kwargs)  # type: ignore[arg-type]
        answers.append(outcome)
        if outcome.status != RunStatus.PARTIAL:
            return answers
    raise AssertionError(f"{task} still partial after {MAX_CALLS} calls")
