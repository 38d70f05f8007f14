"""`/dashboard`: the operators' page, behind HTTP Basic (`DASHBOARD_USER`/`_PASSWORD`).

Mounted only when both settings are set, so without them `/dashboard` is a plain 404.
Pages are rendered on the server with jinja2 and carry no script; "run now", "dry run" and
"force" (past a job's safety brake) are plain form POSTs with a CSRF token, run through the
same Runner as the scheduler (trigger `dashboard`), then redirect to the job's history
(POST/redirect/GET).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.core.runner import DatabaseUnavailable, UnknownTask
from app.http.auth import Auth
from app.http.deps import EngineDep, Operator, RunnerDep, SettingsDep, shown
from app.http.guard import defenses_of
from app.mail import templates
from app.observe import dashboard_view as dashboard
from app.observe import trends, volumes

TEMPLATES = Jinja2Templates(env=templates.ENV)
TEMPLATES.env.globals.update(age=dashboard.age, seconds_text=dashboard.seconds_text)
TEMPLATES.env.globals.update(usage_text=dashboard.usage_text, chart_runs=dashboard.CHART_RUNS,
                             spark_runs=dashboard.SPARK_RUNS)
STYLE = (Path(__file__).resolve().parent.parent / "templates" / "dashboard" / "style.css"
         ).read_text()

# No script may run at all; styles come from our own stylesheet; forms post only here.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _page(request: Request, template: str, context: dict[str, Any],
          status_code: int = 200) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    # With "no-referrer" (the service default) a browser posts forms with `Origin: null`,
    # which the CSRF origin check must refuse; same-origin keeps the real origin on them.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _common(request: Request, operator: Auth) -> dict[str, Any]:
    user = operator.who or ""
    settings = request.app.state.settings
    password = settings.dashboard_password.get_secret_value()
    return {"now": request.app.state.clock(), "user": user,
            "csrf": dashboard.csrf_token(password, user)}


@router.get("")
@router.get("/", name="dashboard_index")
def index(request: Request, operator: Operator, engine: EngineDep) -> HTMLResponse:
    common = _common(request, operator)
    jobs = dashboard.overview(engine, request.app.state.jobs, common["now"])
    return _page(request, "dashboard/index.html", {
        **common, "jobs": jobs, "summary": dashboard.summarize(jobs),
        # The queue's figures where the calls use it (EXECUTION_MODE=queue, docs/queue.md).
        "fleet": (dashboard.fleet(engine, common["now"])
                  if request.app.state.settings.execution_mode == "queue" else None)})


@router.get("/style.css")
def style(_operator: Operator) -> Response:
    return Response(STYLE, media_type="text/css")


@router.get("/jobs/{task}")
def job(request: Request, task: str, operator: Operator, engine: EngineDep,
        page: Annotated[int, Query(ge=1)] = 1, status: str | None = None,
        ran: str | None = None, outcome: str | None = None) -> HTMLResponse:
    jobs = request.app.state.jobs
    if task not in jobs:
        raise HTTPException(404, f"unknown task {shown(task)}")
    if status == "":
        status = None  # "all"
    if status is not None and status not in dashboard.STATUSES:
        raise HTTPException(400, f"unknown status filter {shown(status)}; one of "
                                 f"{', '.join(dashboard.STATUSES)}")
    common = _common(request, operator)
    view = dashboard.job_view(engine, jobs[task], common["now"])
    hist = dashboard.history(engine, task, page=page, status=status)
    invocation_s = request.app.state.settings.invocation_seconds
    trend = trends.job_trends(engine, {task: jobs[task]}, common["now"], invocation_s)[task]
    volume = volumes.job_volumes(engine, {task: jobs[task]}, common["now"],
                                 invocation_s).get(task)
    return _page(request, "dashboard/job.html", {
        **common, "job": view, "history": hist, "statuses": dashboard.STATUSES,
        "trend": trend, "volume": volume, "ran": ran, "outcome": outcome,
    })


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # older browsers omit it; "null" is an opaque, foreign origin
    parsed = urllib.parse.urlsplit(origin)
    return parsed.netloc == request.headers.get("host", request.url.netloc)


@router.post("/jobs/{task}/run")
def run_job(request: Request, task: str, operator: Operator, runner: RunnerDep,
            settings: SettingsDep,
            csrf_token: Annotated[str | None, Form()] = None,
            mode: Annotated[str, Form()] = "run") -> Response:
    password = settings.dashboard_password.get_secret_value() if settings.dashboard_password \
        else ""
    if not _same_origin(request) or not dashboard.csrf_valid(password, operator.who or "",
                                                                 csrf_token):
        raise HTTPException(403, "missing or invalid CSRF token; reload the dashboard")
    if mode not in ("run", "dry_run", "force"):
        raise HTTPException(400, "mode must be run, dry_run or force")
    try:
        outcome = runner.run(task, trigger="dashboard", dry_run=mode == "dry_run",
                             force=mode == "force")
    except UnknownTask:
        raise HTTPException(404, f"unknown task {shown(task)}") from None
    except DatabaseUnavailable as exc:
        raise HTTPException(503, f"{exc}; nothing was run") from None
    defenses_of(request).audit(request, outcome=outcome.status, status_code=303, task=task,
                               run_id=outcome.run_id)
    # A relative target: behind a proxy the service may not know its public scheme.
    query = urllib.parse.urlencode({"ran": str(outcome.run_id or ""), "outcome": outcome.status})
    target = f"/dashboard/jobs/{urllib.parse.quote(task, safe='')}?{query}"
    return RedirectResponse(target, status_code=303)
