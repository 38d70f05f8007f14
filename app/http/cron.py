"""`GET`/`POST /api/cron/{task}`: authenticate, parse, run, map the outcome to a status,
then catch up one missed slot of any job (app/core/catch_up.py).

A task is a job or a group of jobs (`/api/cron/daily-maintenance`, app/core/groups.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from app.core import catch_up
from app.core.groups import run_group
from app.core.registry import BadSlot, GroupSpec, parse_slot
from app.core.runner import DatabaseUnavailable, Runner, UnknownTask
from app.core.status import RunStatus
from app.http.audit import note_run
from app.http.deps import RunnerDep, cron_caller, shown
from app.http.responses import CRON_QUERY, CRON_RESPONSES

ALLOWED_PARAMS = frozenset({"dry_run", "force", "slot"})
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Authenticate the router, not each route: a new cron route cannot forget the check.  The
# guard in front (app/http/guard.py) audits each call with the same decision.
router = APIRouter(prefix="/api/cron", tags=["cron"], dependencies=[Depends(cron_caller)])


def trigger_of(request: Request) -> str:
    """Which scheduler called: Vercel by its user agent, our workflow and crontab by header."""
    agent = request.headers.get("user-agent", "")
    if agent.lower().startswith("vercel-cron"):
        return "vercel"
    source = request.headers.get("x-cron-source", "").strip().lower()
    if source in {"github-actions", "crontab"}:
        return source
    return "http"


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HTTPException(400, f"query parameter {name!r} must be true or false, not {raw!r}")


def _until(runner: Runner) -> float | None:
    """When this invocation ends (FUNCTION_MAX_DURATION from now, when set)."""
    seconds = runner.settings.invocation_seconds
    return None if seconds is None else time.monotonic() + seconds


def _catch_up_fits(runner: Runner, until: float | None, status: RunStatus) -> bool:
    """A catch-up follows the call's own run only with half the invocation still left,
    and never after a run that paused for time."""
    if status == RunStatus.PARTIAL:
        return False
    seconds = runner.settings.invocation_seconds
    return until is None or seconds is None or until - time.monotonic() > seconds / 2


def _run(task: str, request: Request, runner: RunnerDep) -> JSONResponse:
    unknown = sorted(set(request.query_params) - ALLOWED_PARAMS)
    if unknown:
        raise HTTPException(400, f"unknown query parameter(s): {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(ALLOWED_PARAMS))}")
    dry_run = _flag(request, "dry_run")
    force = _flag(request, "force")
    slot = request.query_params.get("slot")
    until = _until(runner)
    group: GroupSpec | None = request.app.state.groups.get(task)
    if group is not None:
        if slot is not None:
            raise HTTPException(400, f"slot backfills one job; call each member of {task} "
                                     f"with ?slot=: {', '.join(group.members)}")
        return _run_group(group, request, runner, dry_run=dry_run, force=force, until=until)
    try:
        outcome = runner.run(task, trigger=trigger_of(request), dry_run=dry_run, force=force,
                             slot=parse_slot(slot) if slot is not None else None,
                             until=until)
    except BadSlot as exc:  # a backfill of a slot the schedule has not, or has not yet
        raise HTTPException(400, str(exc)) from None
    except UnknownTask:
        known = sorted([*runner.jobs, *request.app.state.groups])
        raise HTTPException(404, f"unknown task {shown(task)}; known: "
                                 f"{', '.join(known)}") from None
    except DatabaseUnavailable as exc:
        return JSONResponse({"task": task, "status": RunStatus.UNAVAILABLE,
                             "message": f"{exc}; nothing was run"},
                            status_code=503, headers={"Retry-After": "60"})
    note_run(request, task, outcome.run_id, outcome.status)
    body = outcome.as_json()
    if (catch_up.follows_call(runner.settings, outcome.trigger, dry_run=dry_run, force=force)
            and _catch_up_fits(runner, until, outcome.status)):
        # One missed slot of any job, after this call's own run; its outcome never changes
        # this call's status (app/core/catch_up.py).
        caught = catch_up.catch_up_one(runner, until)
        body["catch_up"] = caught.as_json() if caught is not None else None
    return JSONResponse(body, status_code=outcome.http_status)


def _run_group(group: GroupSpec, request: Request, runner: Runner, *, dry_run: bool,
               force: bool, until: float | None) -> JSONResponse:
    """Every member (app/core/groups.py); the answer is the worst member's status."""
    trigger = trigger_of(request)
    outcome = run_group(runner, group, trigger=trigger, dry_run=dry_run, force=force,
                        until=until)
    note_run(request, group.name, None, outcome.status)
    headers = {"Retry-After": "60"} if outcome.status == RunStatus.UNAVAILABLE else None
    body = outcome.as_json()
    if (catch_up.follows_call(runner.settings, trigger, dry_run=dry_run, force=force)
            and _catch_up_fits(runner, until, outcome.status)):
        caught = catch_up.catch_up_one(runner, until)  # once, after the whole group
        body["catch_up"] = caught.as_json() if caught is not None else None
    return JSONResponse(body, status_code=outcome.http_status, headers=headers)


@router.get("/{task}", summary="Run a cron task (Vercel Cron sends GET)",
            responses=CRON_RESPONSES, openapi_extra=CRON_QUERY)
@router.get("/{task}/", include_in_schema=False)
def run_task_get(task: str, request: Request, runner: RunnerDep) -> JSONResponse:
    return _run(task, request, runner)


@router.post("/{task}", summary="Run a cron task (crontab + curl, GitHub Actions)",
             responses=CRON_RESPONSES, openapi_extra=CRON_QUERY)
@router.post("/{task}/", include_in_schema=False)
def run_task_post(task: str, request: Request, runner: RunnerDep) -> JSONResponse:
    return _run(task, request, runner)
