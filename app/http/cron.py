"""`GET`/`POST /api/cron/{task}`: authenticate, parse, run, map the outcome to a status."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from app.core.registry import BadSlot, parse_slot
from app.core.runner import DatabaseUnavailable, UnknownTask
from app.core.status import RunStatus
from app.http.deps import RunnerDep, require_cron_secret, shown
from app.http.responses import CRON_QUERY, CRON_RESPONSES

ALLOWED_PARAMS = frozenset({"dry_run", "force", "slot"})
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Authenticate the router, not each route: a new cron route cannot forget the check.
router = APIRouter(prefix="/api/cron", tags=["cron"], dependencies=[Depends(require_cron_secret)])


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


def _run(task: str, request: Request, runner: RunnerDep) -> JSONResponse:
    unknown = sorted(set(request.query_params) - ALLOWED_PARAMS)
    if unknown:
        raise HTTPException(400, f"unknown query parameter(s): {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(ALLOWED_PARAMS))}")
    dry_run = _flag(request, "dry_run")
    force = _flag(request, "force")
    slot = request.query_params.get("slot")
    try:
        outcome = runner.run(task, trigger=trigger_of(request), dry_run=dry_run, force=force,
                             slot=parse_slot(slot) if slot is not None else None)
    except BadSlot as exc:  # a backfill of a slot the schedule has not, or has not yet
        raise HTTPException(400, str(exc)) from None
    except UnknownTask:
        raise HTTPException(404, f"unknown task {shown(task)}; known: "
                                 f"{', '.join(sorted(runner.jobs))}") from None
    except DatabaseUnavailable as exc:
        return JSONResponse({"task": task, "status": RunStatus.UNAVAILABLE,
                             "message": f"{exc}; nothing was run"},
                            status_code=503, headers={"Retry-After": "60"})
    request.state.run_id = outcome.run_id
    request.state.run_status = outcome.status
    request.state.task = task
    return JSONResponse(outcome.as_json(), status_code=outcome.http_status)


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
