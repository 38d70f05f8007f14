"""The FastAPI application.  Vercel finds the top-level `app` here with zero config."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings, get_settings
from app.core import registry
from app.core.registry import GroupSpec, JobSpec
from app.core.runner import Runner, RunObserver
from app.db import diagnose, service_engine
from app.http import cron, dashboard, health, unsubscribe
from app.http import metrics as metrics_routes
from app.http.deps import single_valued_query
from app.http.guard import Defenses, guard_cron
from app.http.headers import no_store, security_headers
from app.http.peer import PeerSeeingFastAPI
from app.logs import configure_logging
from app.observe.metrics import build_registry
from app.observe.sentry import observers_for

log = logging.getLogger("app")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _warn_if_no_database_file(settings: Settings) -> None:
    """Said once at startup: the service never creates the SQLite file itself."""
    url = make_url(settings.database_url)
    path = url.database
    if url.get_backend_name() == "sqlite" and path and path != ":memory:" \
            and not os.path.exists(path):
        log.warning("DATABASE_URL: the SQLite file %s does not exist; run "
                    "`voyagesmart-cron migrate` (until then every job answers 503)", path)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Callable[[], dt.datetime] = _utcnow,
    jobs: dict[str, JobSpec] | None = None,
    groups: dict[str, GroupSpec] | None = None,
    observers: list[RunObserver] | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    _warn_unconfigured_jobs(settings, jobs if jobs is not None else registry.JOBS)
    _warn_stripe_key_mode(settings)
    docs = not settings.is_production
    app = PeerSeeingFastAPI(
        title="VoyageSmart Cron",
        version="0.1.0",
        description="Scheduled maintenance jobs for VoyageSmart, behind a bearer secret.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        redirect_slashes=False,
        dependencies=[Depends(single_valued_query)],
    )
    app.state.settings = settings
    if engine is None:
        _warn_if_no_database_file(settings)
    app.state.engine = engine or service_engine(settings)
    app.state.clock = clock
    # Groups whose members are all here; under SCHEDULE_MODE=groups their members follow
    # their schedules, which /health, metrics, the dashboard and the runner read.
    all_jobs = jobs if jobs is not None else registry.JOBS
    app.state.groups = {
        name: group for name, group in (groups if groups is not None else registry.GROUPS).items()
        if all(member in all_jobs for member in group.members)}
    app.state.jobs = registry.scheduled(all_jobs, settings.schedule_mode, app.state.groups)
    app.state.observers = [*observers_for(settings), *(observers or [])]
    app.state.defenses = Defenses(settings, app.state.engine, clock)
    app.state.metrics_registry = build_registry(app.state.engine, lambda: app.state.jobs, clock,
                                                settings.invocation_seconds)
    app.state.runner_factory = lambda: Runner(
        settings, app.state.engine, clock=clock, jobs=app.state.jobs,
        observers=app.state.observers,
    )

    app.middleware("http")(no_store)
    # Added last = runs first: headers wrap every answer, including the guard's refusals.
    app.middleware("http")(guard_cron)
    app.middleware("http")(security_headers)
    # Outermost, before FastAPI's own layers: the client address is the connection's peer,
    # however the server was started (app/http/peer.py).
    app.see_peers(settings)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400 like every other refusal of bad input here (FastAPI's default is 422).
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"[:200]
                   for e in exc.errors()[:10]]
        return JSONResponse({"error": "invalid request", "reasons": reasons}, status_code=400)

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def database_error(request: Request, exc: sa_exc.SQLAlchemyError) -> JSONResponse:
        # Any route whose database went away (metrics, dashboard): a short 503 and one log
        # line, never a traceback; the error's text may name hosts and users.
        problem = diagnose(exc)
        log.error("%s %s: %s (%s)", request.method, request.url.path, problem,
                  type(exc).__name__)
        return JSONResponse({"error": problem}, status_code=503,
                            headers={"Retry-After": "60"})

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; never sent to the client.
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.include_router(cron.router)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(unsubscribe.router)
    if settings.dashboard_enabled:
        app.include_router(dashboard.router)

    @app.get("/", include_in_schema=False)
    def index() -> dict[str, Any]:
        return {"service": "voyagesmart-cron", "health": "/health",
                "tasks": sorted(app.state.jobs), "groups": sorted(app.state.groups)}

    return app


def _warn_unconfigured_jobs(settings: Settings, jobs: dict[str, JobSpec]) -> None:
    """In production, say at startup which enabled jobs cannot run for lack of settings
    (they would refuse at their first run; /health with the secret lists them too)."""
    if not (settings.is_production and settings.enable_cron_jobs):
        return
    from app.core.requirements import missing_settings

    for spec in jobs.values():
        missing = missing_settings(spec.settings, settings)
        if missing:
            log.warning("%s cannot run: %s", spec.name, "; ".join(missing))


def _warn_stripe_key_mode(settings: Settings) -> None:
    """A test Stripe key in production, or a live one outside it (app/adapters/stripe_key.py)."""
    from app.adapters.stripe_key import key_mode_problem

    problem = key_mode_problem(settings)
    if problem is not None:
        (log.error if problem.severity == "issue" else log.warning)("%s", problem.message)


# Vercel (and `uvicorn app.main:app`) import this.  Bad settings stop the import with one
# line naming the variable (ConfigError is a SystemExit), not a traceback.
app = create_app()
