"""One decision per request (app/http/auth.py): every route declares an authentication
dependency or is listed as public here, and the audit reads the decision the route got."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from starlette.requests import Request

from app.http import cron
from app.http.auth import Auth, Credential, Outcome, Surface, authenticate
from app.http.deps import AUTHENTICATIONS
from app.main import create_app
from tests.conftest import SECRET, auth, make_settings, rows

# Routes that need no credential, each with its reason.
PUBLIC = {
    "/": "the index names the service and its tasks",
    "/unsubscribe": "the signed link is the credential (app/http/unsubscribe.py)",
    "/unsubscribe/": "the signed link is the credential (app/http/unsubscribe.py)",
    "/openapi.json": "development only",
    "/docs": "development only",
    "/docs/oauth2-redirect": "development only",
}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _routes(app: FastAPI) -> Iterator[tuple[str, list[str], Dependant | None]]:
    """Every route the app serves: its own, and those of included routers (FastAPI keeps
    an included router as one entry whose `effective_route_contexts` lists its routes)."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            yield route.path, sorted(route.methods), route.dependant
        for context in getattr(route, "effective_route_contexts", list)():
            yield context.path, sorted(context.methods), context.dependant


def _unauthenticated(app: FastAPI) -> list[str]:
    return [f"{methods} {path}" for path, methods, dependant in _routes(app)
            if path not in PUBLIC
            and (dependant is None or not set(_calls(dependant)) & set(AUTHENTICATIONS))]


def _paths(app: FastAPI) -> set[str]:
    return {path for path, _methods, _dependant in _routes(app)}


def test_every_route_of_the_served_app_declares_its_authentication() -> None:
    from app.main import app

    assert _unauthenticated(app) == []
    assert {"/api/cron/{task}", "/api/cron/{task}/", "/metrics", "/health",
            "/unsubscribe"} <= _paths(app)


def test_every_dashboard_route_declares_its_authentication(db_url: str, tmp_path: Path,
                                                           engine: Engine) -> None:
    app = create_app(make_settings(db_url, tmp_path, dashboard_user="ops",
                                   dashboard_password="p" * 20), engine=engine)
    assert "/dashboard/jobs/{task}/run" in _paths(app)
    assert _unauthenticated(app) == []


def test_a_route_without_authentication_is_caught(db_url: str, tmp_path: Path,
                                                   engine: Engine) -> None:
    app = create_app(make_settings(db_url, tmp_path), engine=engine)

    @app.get("/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    assert _unauthenticated(app) == ["['GET'] /forgotten"]


def _request(headers: dict[str, str], query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw,
                    "query_string": query.encode()})


def test_the_decision_is_typed_and_frozen(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, cron_secret="n" * 40,
                             cron_secret_previous=SECRET, metrics_token="m" * 40)
    old = authenticate(_request(auth()), settings, Surface.CRON)
    assert old == Auth(Surface.CRON, "scheduler", Credential.PREVIOUS_CRON_SECRET,
                       Outcome.ACCEPTED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.who = "someone else"  # type: ignore[misc]
    token = authenticate(_request(auth("m" * 40)), settings, Surface.METRICS)
    assert (token.who, token.how) == ("monitor", Credential.METRICS_TOKEN)
    assert authenticate(_request({}), settings, Surface.HEALTH).outcome is Outcome.ANONYMOUS
    in_query = authenticate(_request(auth("n" * 40), "secret=x"), settings, Surface.CRON)
    assert in_query.refused and "query string" in in_query.reason
    long = authenticate(_request({"Authorization": "Bearer " + "x" * 2000}), settings,
                        Surface.CRON)
    assert (long.status, long.reason) == (400, "Authorization header too long")
    # /health with a bad bearer: one answer whatever is wrong, so no oracle.
    assert authenticate(_request({"Authorization": "Bearer " + "x" * 2000}), settings,
                        Surface.HEALTH).reason == "invalid credentials"


@pytest.fixture
def client_from(db_url: str, tmp_path: Path, engine: Engine) -> Callable[..., TestClient]:
    def make(app_hook: Callable[[FastAPI], None] | None = None, **overrides: Any) -> TestClient:
        app = create_app(make_settings(db_url, tmp_path, **overrides), engine=engine)
        if app_hook is not None:
            app_hook(app)
        return TestClient(app, raise_server_exceptions=False)

    return make


def test_a_cron_route_that_forgets_to_note_its_run_is_logged_as_an_error(
        client_from: Callable[..., TestClient], engine: Engine,
        caplog: pytest.LogCaptureFixture) -> None:
    def add_route(app: FastAPI) -> None:
        @cron.router.get("/{task}/forgetful")
        def forgetful(task: str) -> dict[str, str]:
            return {"task": task}

        app.include_router(cron.router)

    caplog.set_level(logging.ERROR, logger="app.http.guard")
    try:
        client = client_from(add_route)
        answer = client.get("/api/cron/promo-cleanup/forgetful", headers=auth())
        refused = client.get("/api/cron/promo-cleanup/forgetful")
    finally:
        cron.router.routes[:] = [r for r in cron.router.routes
                                 if getattr(r, "path", "") != "/api/cron/{task}/forgetful"]
    assert (answer.status_code, refused.status_code) == (200, 401)
    assert [r.getMessage() for r in caplog.records
            if "without noting its run" in r.getMessage()] == [
        "GET /api/cron/promo-cleanup/forgetful answered 200 without noting its run for the "
        "audit log (app/http/audit.py note_run)"]
    assert [(r.outcome, r.run_id) for r in rows(
        engine, "SELECT outcome, run_id FROM cron_audit_log ORDER BY id")] == [
        ("ok", None), ("auth_failed", None)]


def test_the_audit_reads_the_run_the_route_noted(
        client_from: Callable[..., TestClient], engine: Engine) -> None:
    client = client_from()
    answer = client.post("/api/cron/promo-cleanup?force=true", headers=auth())
    assert answer.status_code == 200
    row = rows(engine, "SELECT outcome, run_id, task FROM cron_audit_log")[0]
    assert (row.outcome, str(row.run_id).replace("-", ""), row.task) == (
        answer.json()["status"], answer.json()["run_id"].replace("-", ""), "promo-cleanup")
