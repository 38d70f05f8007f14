"""`GET /health`: 200 healthy or 503 unhealthy, for uptime monitors; each probe also alerts
a job that turned overdue or stuck (app/observe/alerts.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from app.adapters.stripe_key import key_mode_problem
from app.core import budget, health
from app.core.requirements import check_jobs
from app.db import DATABASE_PROBLEMS, database_state, ping
from app.http.deps import EngineDep, HealthViewer, SettingsDep
from app.http.responses import HEALTH_RESPONSES
from app.observe import alerts, run_marks, trends, volumes

router = APIRouter(tags=["health"])


# Uptime monitors often probe with HEAD; the same answer without its body.
@router.head("/health", include_in_schema=False)
@router.get("/health", summary="Service health: database probe, overdue and stuck jobs",
            responses=HEALTH_RESPONSES)
def get_health(request: Request, settings: SettingsDep, engine: EngineDep,
               viewer: HealthViewer) -> JSONResponse:
    now = request.app.state.clock()
    jobs = request.app.state.jobs
    # Anonymous, or the cron secret (details); a wrong bearer was refused by `viewer`.
    detailed = viewer.accepted
    body: dict[str, Any] = {"checked_at": now.isoformat()}
    try:
        ping(engine)
        # Read before the run log (app/observe/alerts.py says why).
        incidents = alerts.snapshot(engine, jobs) if settings.enable_cron_jobs else None
        facts, baseline = health.read_facts(engine, jobs)
        marks = run_marks.latest_marks(engine, list(jobs))
        outlook = trends.job_trends(engine, jobs, now, settings.invocation_seconds)
        growth = volumes.job_volumes(engine, jobs, now, settings.invocation_seconds)
    except sa_exc.SQLAlchemyError as exc:
        state = database_state(exc)
        body.update(status="unhealthy", database=state, issues=[DATABASE_PROBLEMS[state]])
        if detailed:
            body["database_error"] = type(exc).__name__
        return JSONResponse(body, status_code=503)
    results, issues = health.evaluate(jobs, facts, now, baseline,
                                      dt.timedelta(seconds=settings.dead_after))
    # Overdue and stuck jobs have no run to report them: every probe checks for them, and
    # alerts a change once across instances.
    with budget.limited(settings.alert_timeout):
        alerts.check(settings, engine, jobs, now, results, incidents)
    warnings: list[str] = []
    stripe_key = key_mode_problem(settings)
    if stripe_key is not None:
        (issues if stripe_key.severity == "issue" else warnings).append(stripe_key.message)
    body.update(status="unhealthy" if issues else "healthy", database="ok", issues=issues)
    if not settings.enable_cron_jobs:
        warnings.append("cron jobs are disabled (ENABLE_CRON_JOBS=false)")
    # Unusual runs, budgets and limits in sight are warnings: the jobs still work (app/observe/).
    warnings += [marks[name].warning(detailed=detailed) for name in jobs if name in marks]
    warnings += trends.warnings(outlook)
    warnings += volumes.warnings(growth)
    if marks:
        body["anomalies"] = {name: marks[name].kinds for name in jobs if name in marks}
    if warnings:
        body["warnings"] = warnings
    if detailed:
        try:
            checks = check_jobs(engine, settings, jobs)
        except sa_exc.SQLAlchemyError as exc:
            checks = {}
            body["schema_check_error"] = type(exc).__name__
        # Jobs that would refuse to run here: their tables do not fit this database, row-
        # level security would hide rows, or their integration lacks settings.
        body["cannot_run"] = {name: check.refusal() for name, check in checks.items()
                              if not check.can_run}
        schema_warnings = {name: check.warnings for name, check in checks.items()
                           if check.warnings}
        if schema_warnings:
            body["schema_warnings"] = schema_warnings
        body["jobs"] = {
            item.name: {
                "critical": item.critical,
                "overdue": item.overdue,
                "stuck": item.stuck,
                "dead": item.dead,
                "failing": item.failing,
                "last_success": _iso(item.facts.last_success),
                "last_run": _iso(item.facts.last_run),
                "last_status": item.facts.last_status,
                "last_message": item.facts.last_message,
                "due_by": _iso(item.due_by),
                "next_fire": _iso(item.next_fire),
                "anomalies": marks[item.name].as_dict() if item.name in marks else None,
                "trend": outlook[item.name].as_dict(),
                "volume": growth[item.name].as_dict() if item.name in growth else None,
            }
            for item in results
        }
    return JSONResponse(body, status_code=503 if issues else 200)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
