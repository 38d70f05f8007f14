"""`/dashboard`: the operators' page, behind HTTP Basic (`DASHBOARD_USER`/`_PASSWORD`).

Mounted only when both settings are set, so without them `/dashboard` is a plain 404.
Pages are rendered on the server with jinja2 and carry no script; "run now", "dry run" and
"force" (past a job's safety brake) are plain form POSTs with a CSRF token, run through the
same Runner as the scheduler (trigger `dashboard`), then redirect to the job's history
(POST/redirect/GET).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.core.runner import DatabaseUnavailable, UnknownTask
from app.http.deps import EngineDep, RunnerDep, SettingsDep, shown
from app.http.guard import defenses_of, refuse_failed_auth
from app.mail import templates
from app.observe import dashboard_view as dashboard

TEMPLATES = Jinja2Templates(env=templates.ENV)
TEMPLATES.env.globals.update(age=dashboard.age, seconds_text=dashboard.seconds_text)
TEMPLATES.env.globals.update(usage_text=dashboard.usage_text, chart_runs=dashboard.CHART_RUNS,
                             spark_runs=dashboard.SPARK_RUNS)
STYLE = (Path(__file__).resolve().parent.parent / "templates" / "dashboard" / "style.css"
         ).read_text()

# No script may run at all; styles come from our own stylesheet; forms post only here.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

def basic_credentials(request: Request) -> tuple[str, str] | None:
    """User and password of an `Authorization: Basic` header, None when absent or malformed.

    Parsed here rather than by fastapi's HTTPBasic, which answers a malformed header itself
    and so would skip the failure count and the audit row.
    """
    scheme, _, param = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not param.strip() or len(param) > 1024:
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else None


def require_operator(request: Request, settings: SettingsDep) -> str:
    user = settings.dashboard_user or ""
    password = settings.dashboard_password.get_secret_value() if settings.dashboard_password \
        else ""
    credentials = basic_credentials(request)
    given_user, given_password = credentials or ("", "")
    # Both compared every time, in constant time, so timing says nothing about which failed.
    ok = hmac.compare_digest(given_user.encode(), user.encode())
    ok &= hmac.compare_digest(given_password.encode(), password.encode())
    if credentials is None or not ok or not user:
        refused = refuse_failed_auth(request)
        if refused is not None:
            raise HTTPException(429, "too many failed authentications; retry later",
                                headers={"Retry-After": refused.headers["Retry-After"]})
        raise HTTPException(401, "dashboard credentials required",
                            headers={"WWW-Authenticate":
                                     'Basic realm="voyagesmart-cron dashboard"'})
    return user


OperatorDep = Annotated[str, Depends(require_operator)]
router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _page(request: Request, template: str, context: dict[str, Any],
          status_code: int = 200) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    # With "no-referrer" (the service default) a browser posts forms with `Origin: null`,
    # which the CSRF origin check must refuse; same-origin keeps the real origin on them.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _common(request: Request, user: str) -> dict[str, Any]:
    settings = request.app.state.settings
    password = settings.dashboard_password.get_secret_value()
    return {"now": request.app.state.clock(), "user": user,
            "csrf": dashboard.csrf_token(password, user)}


@router.get("")
@router.get("/", name="dashboard_index")
def index(request: Request, user: OperatorDep, engine: EngineDep) -> HTMLResponse:
    common = _common(request, user)
    jobs = dashboard.overview(engine, request.app.state.jobs, common["now"])
    return _page(request, "dashboard/index.html", {**common, "jobs": jobs,
                                                    "summary": dashboard.summarize(jobs)})


@router.get("/style.css")
def style(_user: OperatorDep) -> Response:
    return Response(STYLE, media_type="text/css")


@router.get("/jobs/{task}")
def job(request: Request, task: str, user: OperatorDep, engine: EngineDep,
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
    common = _common(request, user)
    view = dashboard.job_view(engine, jobs[task], common["now"])
    hist = dashboard.history(engine, task, page=page, status=status)
    return _page(request, "dashboard/job.html", {
        **common, "job": view, "history": hist, "statuses": dashboard.STATUSES,
        "ran": ran, "outcome": outcome,
    })


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # older browsers omit it; "null" is an opaque, foreign origin
    parsed = urllib.parse.urlsplit(origin)
    return parsed.netloc == request.headers.get("host", request.url.netloc)


@router.post("/jobs/{task}/run")
def run_job(request: Request, task: str, user: OperatorDep, runner: RunnerDep,
            settings: SettingsDep,
            csrf_token: Annotated[str | None, Form()] = None,
            mode: Annotated[str, Form()] = "run") -> Response:
    password = settings.dashboard_password.get_secret_value() if settings.dashboard_password \
        else ""
    if not _same_origin(request) or not dashboard.csrf_valid(password, user, csrf_token):
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
