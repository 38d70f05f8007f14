"""Bad input gets a 400 that says what was wrong, on every surface, and nothing runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.conftest import auth, make_settings, rows

USER, PASSWORD = "ops", "dashboard-password-123"


@pytest.fixture
def dash(make_client: Callable[..., TestClient], db_url: str, tmp_path: Path) -> TestClient:
    settings = make_settings(db_url, tmp_path, dashboard_user=USER, dashboard_password=PASSWORD)
    return make_client(settings=settings)


def _runs(engine: Engine) -> int:
    return int(rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n)


@pytest.mark.parametrize("query", ["dry_run=true&dry_run=false", "dry_run=false&dry_run=true",
                                   "force=1&force=1", "force=1&dry_run=1&force=0"])
def test_a_repeated_cron_parameter_is_400_and_runs_nothing(client: TestClient, engine: Engine,
                                                           query: str) -> None:
    for method in (client.get, client.post):
        response = method(f"/api/cron/promo-cleanup?{query}", headers=auth())
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "repeated" in error and query.split("=")[0] in error
    assert _runs(engine) == 0


def test_a_repeated_parameter_is_400_everywhere(dash: TestClient) -> None:
    assert dash.get("/health?a=1&a=2").status_code == 400
    assert dash.get("/metrics?a=1&a=2", headers=auth()).status_code == 400
    response = dash.get("/dashboard/jobs/promo-cleanup?page=1&page=2", auth=(USER, PASSWORD))
    assert response.status_code == 400
    assert "page" in response.json()["error"]


@pytest.mark.parametrize(("page", "reason"), [("-1", "greater than or equal to 1"),
                                              ("0", "greater than or equal to 1"),
                                              ("abc", "valid integer"),
                                              ("1e9999", "valid integer")])
def test_a_bad_dashboard_page_is_400_saying_why(dash: TestClient, page: str,
                                                reason: str) -> None:
    response = dash.get(f"/dashboard/jobs/promo-cleanup?page={page}", auth=(USER, PASSWORD))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid request"
    assert any("page" in item and reason in item for item in body["reasons"]), body


def test_an_unknown_dashboard_status_filter_is_400(dash: TestClient) -> None:
    response = dash.get("/dashboard/jobs/promo-cleanup?status=bogus", auth=(USER, PASSWORD))
    assert response.status_code == 400
    assert "status" in response.json()["error"]
    ok = dash.get("/dashboard/jobs/promo-cleanup?status=error", auth=(USER, PASSWORD))
    assert ok.status_code == 200


def test_a_huge_task_name_is_not_echoed_whole(dash: TestClient) -> None:
    name = "x" * 10_000
    for response in (dash.get(f"/api/cron/{name}", headers=auth()),
                     dash.post(f"/api/cron/{name}", headers=auth()),
                     dash.get(f"/dashboard/jobs/{name}", auth=(USER, PASSWORD))):
        assert response.status_code == 404
        assert len(response.text) < 600, len(response.text)
        assert "x" * 100 not in response.text
        assert "unknown task" in response.json()["error"]


def test_head_health_answers_like_get(client: TestClient) -> None:
    get = client.get("/health")
    head = client.head("/health")
    assert head.status_code == get.status_code
    assert head.status_code in (200, 503)
    assert head.content == b""
    assert head.headers["cache-control"] == "no-store"
