"""The statuses of a run: the one list every module refers to.

A run's log row (`cron_job_log.status`) is written `running` and closed `success`,
`warning` or `error`; a row whose process died is closed `abandoned` by a later run.  A run
whose job declared a precondition that held (nothing to do: app/core/registry.py) is
closed `skipped` with the reason, and counts as done for its slot and for overdue.  A run
made of chunks (app/core/chunks.py) that reached its invocation's time budget is closed
`partial`: its finished chunks are kept, and the next call for its slot continues it
under the same row (it is neither done nor failed).  Three
more statuses only ever answer a call and are never stored: `duplicate` (the slot already
ran, or is running now), `disabled` (ENABLE_CRON_JOBS=false) and `unavailable` (the
database could not be reached, so nothing ran).

Members are `str`s equal to their value, so a status compares, serialises to JSON and binds
in SQL exactly as the bare string did.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    ABANDONED = "abandoned"
    PARTIAL = "partial"
    SKIPPED = "skipped"
    DUPLICATE = "duplicate"
    DISABLED = "disabled"
    UNAVAILABLE = "unavailable"


# What the run log holds, in the order metrics and the dashboard list them.
LOGGED = (RunStatus.SUCCESS, RunStatus.WARNING, RunStatus.SKIPPED, RunStatus.ERROR,
          RunStatus.ABANDONED, RunStatus.PARTIAL, RunStatus.RUNNING)
# A slot with a run in one of these has run: a later delivery of it is a duplicate, and
# health measures overdue from the latest of them.
DONE = (RunStatus.SUCCESS, RunStatus.WARNING, RunStatus.SKIPPED)
# The runs that did the job's work (not skipped): what a job's "last run" means to a
# precondition, and the history a run's figures are compared with.
WORKED = (RunStatus.SUCCESS, RunStatus.WARNING)
# A run that ended in one of these failed: health calls its task failing, the dashboard red.
FAILED = (RunStatus.ERROR, RunStatus.ABANDONED)
# What a job may return: a job that fails raises instead (app/core/errors.py).
JobStatus = Literal[RunStatus.SUCCESS, RunStatus.WARNING]
