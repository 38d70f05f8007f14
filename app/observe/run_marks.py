"""Marks on the run log: each finished run judged against its job's recent runs.

1. When a run ends `success` or `warning`, the runner calls `mark_run`: one query reads the
   run's own row and the job's last `RULES.window` successful real runs before it;
   app/observe/anomalies.py judges the run; the marks it earned, if any, are stored on its
   row (`cron_job_log.anomalies`), each with the measure, the value, the baseline and the
   factor.
2. `/health`, `/metrics` and the dashboard read each job's latest finished run with
   `latest_marks` (one grouped read): a mark shows until the job's next run is judged.

Both sides of the comparison measure a run as its log row does (`ended_at - started_at`),
so the figures match the dashboard's and the metrics' durations.  Dry runs and runs that
did not succeed are neither judged nor part of a baseline; a `skipped` run, which does no
work by design, is not judged either.  Marking never raises: monitoring must not break a run.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from app.observe.anomalies import RULES, Rules, Sample, assess

log = logging.getLogger("app.observe.run_marks")
log_t = table_of(CronJobLog)

# The statuses of a run that did its work: judged.  The baseline is successful runs only.
JUDGED = (RunStatus.SUCCESS, RunStatus.WARNING)


def _sample(row: Any) -> Sample:
    duration = (row.ended_at - row.started_at).total_seconds() * 1000
    return Sample(row.started_at, max(0.0, duration), int(row.records_processed or 0))


def mark_run(engine: Engine, task: str, run_id: uuid.UUID, rules: Rules = RULES
             ) -> list[dict[str, Any]]:
    """Judge the closed run `run_id` of `task` and store its marks; returns them (JSON-ready,
    empty when the run is ordinary or its job has too little history)."""
    query = (
        sa.select(log_t.c.run_id, log_t.c.started_at, log_t.c.ended_at,
                  log_t.c.records_processed)
        .where(log_t.c.job_name == task, log_t.c.dry_run.is_(False),
               log_t.c.ended_at.is_not(None),
               sa.or_(log_t.c.status == RunStatus.SUCCESS, log_t.c.run_id == run_id))
        .order_by(log_t.c.started_at.desc(), log_t.c.id.desc())
        .limit(rules.window + 1)
    )
    try:
        with engine.begin() as conn:
            rows = conn.execute(query).all()
            own = next((row for row in rows if row.run_id == run_id), None)
            if own is None:
                return []
            history = [_sample(row) for row in rows if row.run_id != run_id]
            marks = [mark.as_dict() for mark in assess(_sample(own), history, rules)]
            if marks:
                conn.execute(log_t.update().where(log_t.c.run_id == run_id)
                             .values(anomalies=marks))
    except sa_exc.SQLAlchemyError as exc:
        log.warning("could not judge run %s of %s: %s", run_id, task, type(exc).__name__)
        return []
    if marks:
        log.warning("run %s of %s is unusual: %s", run_id, task,
                    "; ".join(mark["reason"] for mark in marks))
    return marks


@dataclass(frozen=True)
class RunMarks:
    """The marks of a job's latest finished real run."""

    task: str
    run_id: uuid.UUID
    started_at: dt.datetime
    marks: tuple[dict[str, Any], ...]

    @property
    def kinds(self) -> list[str]:
        return [str(mark["kind"]) for mark in self.marks]

    def warning(self, *, detailed: bool) -> str:
        """The line /health lists: figures only for a caller holding the cron secret."""
        if detailed:
            what = "; ".join(str(mark["reason"]) for mark in self.marks)
        else:
            what = ", ".join(kind.replace("_", " ") for kind in self.kinds)
        return f"{self.task}'s latest run was unusual: {what}"

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": str(self.run_id), "started_at": self.started_at.isoformat(),
                "marks": list(self.marks)}


def latest_marks(engine: Engine, names: list[str]) -> dict[str, RunMarks]:
    """Each job whose latest finished real run carries marks, with them: one grouped read."""
    latest = (
        sa.select(sa.func.max(log_t.c.id).label("id"))
        .where(log_t.c.job_name.in_(names), log_t.c.dry_run.is_(False),
               log_t.c.ended_at.is_not(None))
        .group_by(log_t.c.job_name)
        .subquery()
    )
    query = (sa.select(log_t.c.job_name, log_t.c.run_id, log_t.c.started_at,
                       log_t.c.anomalies)
             .join(latest, latest.c.id == log_t.c.id)
             .where(log_t.c.anomalies.is_not(None)))
    with engine.connect() as conn:
        return {row.job_name: RunMarks(row.job_name, row.run_id, row.started_at,
                                       tuple(row.anomalies))
                for row in conn.execute(query) if row.anomalies}
