"""The project's own failures: what a job, an adapter or the runner raises to say how a run
ends.  Adapters (app/adapters/, app/mail/) turn their library's exceptions into these where the
library is called, so the runner decides retry or not without knowing any library."""

from __future__ import annotations

from typing import Any


class TransientError(Exception):
    """A failure worth retrying: the same work may succeed a moment later."""


class JobRefused(Exception):
    """The job stopped before changing anything, for a reason an operator must act on: its
    tables do not fit, row-level security would hide rows, its integration is not
    configured, or a safety brake tripped.  The run ends `error` with this one line as its
    message and `details` on the log row; it is not retried: the same data gives the same
    answer.
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class JobAborted(Exception):
    """The job stopped cleanly on purpose (e.g. its time budget); nothing is half-done."""
