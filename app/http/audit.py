"""The audit log: one `cron_audit_log` row per cron call and per failed authentication.

A row holds time, address, user agent, method, path, task, outcome, status and run id;
never the token, and the path without its query string (a secret pasted there stays out).
Rows older than `AUDIT_RETENTION_DAYS` are pruned opportunistically, at most once an hour
per instance, by a request that writes an audit row (app/http/guard.py `Defenses.audit`):
no job or scheduler entry is needed for it.

A cron call's outcome is read, not handed over by convention: the authentication the
route's dependency decided (app/http/auth.py) and the run the route noted with `note_run`.
A cron route that answers as a run would without noting it is logged as an error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import table_of
from app.http.auth import Auth, Credential
from app.models import CronAuditLog

audit_t = table_of(CronAuditLog)

_RUN_KEY = "audited_run"
_OUTCOME_BY_STATUS = {200: "ok", 400: "bad_request", 401: "auth_failed", 404: "unknown_task",
                      409: "busy", 429: "rate_limited", 500: "failed", 503: "unavailable"}
# The statuses a cron route answers only with a run's outcome (app/core/runner.py).
RUN_STATUSES = frozenset({200, 409, 500})


@dataclass(frozen=True)
class RunNote:
    """What a cron route ran, for the audit row."""

    task: str
    run_id: Any
    status: str


def note_run(request: Request, task: str, run_id: Any, status: str) -> None:
    """Called by a cron route once the runner answered: the audit row names the run."""
    request.scope.setdefault("state", {})[_RUN_KEY] = RunNote(task, run_id, str(status))


def noted_run(request: Request) -> RunNote | None:
    note: RunNote | None = request.scope.get("state", {}).get(_RUN_KEY)
    return note


def cron_outcome(auth: Auth, status_code: int, run: RunNote | None) -> str:
    """The audit outcome of a cron call the route answered."""
    if not auth.accepted and status_code in (400, 401):
        return "auth_failed"
    outcome = run.status if run is not None else _OUTCOME_BY_STATUS.get(
        status_code, f"http_{status_code}")
    if auth.how is Credential.PREVIOUS_CRON_SECRET:
        # An operator rotating the secret sees which callers still need the new one.
        outcome = f"{outcome}+old_secret"
    return outcome


class AuditLog:
    """Writes and prunes `cron_audit_log` rows."""

    def __init__(self, settings: Settings, engine: Engine,
                 clock: Callable[[], dt.datetime]) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock

    def write(self, request: Request, address: str | None, *, outcome: str,
              status_code: int, task: str | None = None, run_id: Any = None) -> None:
        """One row (the caller decides what a database error means)."""
        row = {
            "created_at": self.clock(),
            "client_ip": (address or "")[:64] or None,
            "user_agent": (request.headers.get("user-agent") or "")[:512] or None,
            "method": request.method[:8],
            # The path only: a query string could carry a secret someone pasted there.
            "path": request.url.path[:512],
            "task": task[:64] if task else None,
            "outcome": outcome[:32],
            "status_code": status_code,
            "run_id": run_id,
        }
        with self.engine.begin() as conn:
            conn.execute(audit_t.insert().values(**row))

    def prune(self, now: dt.datetime) -> int:
        """Delete the rows past retention; how many went."""
        cutoff = now - dt.timedelta(days=self.settings.audit_retention_days)
        with self.engine.begin() as conn:
            deleted: int = conn.execute(
                audit_t.delete().where(audit_t.c.created_at < cutoff)).rowcount
        return deleted
