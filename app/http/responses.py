"""What the public routes answer, declared for the OpenAPI schema (checked by schemathesis).

The routes build their JSON by hand (`RunOutcome.as_json`, the health body); these models
only describe it, so the schema and the answers cannot drift without a test noticing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    error: str
    reasons: list[str] | None = None


class RunBody(BaseModel):
    """A run's outcome (200 done or duplicate, 409 running, 500 failed, 503 disabled)."""

    model_config = ConfigDict(extra="allow")

    task: str
    run_id: str | None
    status: str
    trigger: str
    slot: str | None
    dry_run: bool
    records_processed: int
    duration_ms: int
    attempts: int
    message: str
    details: dict[str, Any]
    # A scheduler's call: the missed slot it ran after its own run (the same fields), or
    # null when none was missed (app/core/catch_up.py).
    catch_up: dict[str, Any] | None = None


class GroupBody(BaseModel):
    """A group's outcome (`/api/cron/daily-maintenance`, app/core/groups.py): each member's
    run, and the worst status as its own."""

    model_config = ConfigDict(extra="allow")

    task: str
    group: bool
    status: str
    trigger: str
    dry_run: bool
    duration_ms: int
    message: str
    members: list[RunBody]
    catch_up: dict[str, Any] | None = None


# What a task's route answers: one run, or, for a group's name, its members' runs.
Answer = RunBody | GroupBody


class UnavailableBody(BaseModel):
    """503 when nothing could run: jobs disabled, or the database unreachable."""

    model_config = ConfigDict(extra="allow")

    task: str
    status: str
    message: str


class HealthBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    checked_at: str
    database: str
    issues: list[str]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


CRON_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Answer, "description": "done (skipped: nothing to do), or a duplicate of "
          "a slot already done"},
    202: {"model": Answer, "description": "partial: the run stopped for time, its chunks "
          "done and left in `details`; the next call for the task continues it"},
    400: _error("bad query parameter (a slot the schedule does not have, or in the future) "
                "or malformed Authorization header"),
    401: _error("missing or wrong bearer secret"),
    403: _error("the client address is not in CRON_IP_ALLOWLIST"),
    404: _error("unknown task"),
    409: {"model": Answer, "description": "the same task is running now"},
    429: _error("rate limited; see Retry-After"),
    500: {"model": Answer, "description": "the job failed after its retries"},
    503: {"model": UnavailableBody, "description": "jobs disabled or database unreachable"},
}

_FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}
CRON_QUERY: dict[str, Any] = {"parameters": [
    {"name": "dry_run", "in": "query", "required": False, "schema": _FLAG,
     "description": "report what would change without changing it"},
    {"name": "force", "in": "query", "required": False, "schema": _FLAG,
     "description": "run outside the schedule's slot (a manual run)"},
    {"name": "slot", "in": "query", "required": False,
     "schema": {"type": "string", "format": "date-time"},
     "description": "backfill: run this past slot of the schedule (ISO 8601, UTC when no "
     "offset), with its data window; once, unless forced"},
]}

HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthBody, "description": "healthy"},
    401: _error("a bearer was sent and it is not the secret"),
    429: _error("too many failed authentications from this address; see Retry-After"),
    503: {"model": HealthBody, "description": "unhealthy: the issues are listed"},
}
