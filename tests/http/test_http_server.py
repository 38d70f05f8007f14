"""The app served by uvicorn in a subprocess answers real HTTP requests from a scheduler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.conftest import SECRET, auth, rows
from tests.support.servers import UvicornProcess

NEW_SECRET = "rotated-secret-abcdefghijklmnopqrstuvwxyz-0123"

pytestmark = pytest.mark.slow


def _assert_clean(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    for leak in ("Traceback", 'File "', SECRET, NEW_SECRET):
        assert leak not in response.text


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[UvicornProcess]:
    # Mid-rotation: the new secret is current, the old one (SECRET) still accepted.
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": NEW_SECRET,
        "CRON_SECRET_PREVIOUS": SECRET, "DATA_DIR": str(tmp_path / "data"),
    }, cwd=tmp_path).start()
    yield proc
    proc.stop()


def test_bad_credentials_are_401(server: UvicornProcess) -> None:
    url = f"{server.url}/api/cron/promo-cleanup"
    with httpx.Client(timeout=30) as http:
        answers = [
            http.get(url),
            http.post(url),
            http.get(url, headers=auth("x" * 40)),
            http.get(url, headers={"Authorization": f"Basic {SECRET}"}),
            http.get(url, params={"secret": SECRET}),
            http.get(url, params={"token": NEW_SECRET}),
        ]
    for response in answers:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "error" in response.json()
        _assert_clean(response)


def test_right_secret_runs_by_get_and_post(server: UvicornProcess, engine: Engine) -> None:
    url = f"{server.url}/api/cron/promo-cleanup"
    with httpx.Client(timeout=30) as http:
        by_get = http.get(url, params={"force": "true"}, headers=auth(NEW_SECRET))
        by_post = http.post(url, params={"force": "true"}, headers=auth(NEW_SECRET))
        by_previous = http.post(url, params={"force": "true"}, headers=auth(SECRET))
    run_ids = []
    for response in (by_get, by_post, by_previous):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["task"] == "promo-cleanup"
        assert body["status"] == "success"
        assert isinstance(body["records_processed"], int)
        assert isinstance(body["duration_ms"], int)
        assert body["message"]
        run_ids.append(body["run_id"])
        _assert_clean(response)
    logged = rows(engine, "SELECT run_id, status, trigger FROM cron_job_log ORDER BY id")
    assert [uuid.UUID(str(r.run_id)) for r in logged] == [uuid.UUID(i) for i in run_ids]
    assert {(r.status, r.trigger) for r in logged} == {("success", "http")}


def test_unknown_task_trailing_slash_and_bad_input(server: UvicornProcess) -> None:
    base = f"{server.url}/api/cron"
    headers = auth(NEW_SECRET)
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        unknown = http.get(f"{base}/no-such-task", headers=headers)
        slash_get = http.get(f"{base}/promo-cleanup/", params={"dry_run": "1"}, headers=headers)
        slash_post = http.post(f"{base}/promo-cleanup/", params={"dry_run": "1"},
                               headers=headers)
        slash_unauth = http.get(f"{base}/promo-cleanup/")
        bad_param = http.get(f"{base}/promo-cleanup", params={"verbose": "1"}, headers=headers)
        bad_method = http.delete(f"{base}/promo-cleanup", headers=headers)
        health = http.get(f"{server.url}/health")
    assert unknown.status_code == 404
    assert "promo-cleanup" in unknown.json()["error"]
    for response in (slash_get, slash_post):
        assert response.status_code == 200, response.text
        assert response.json()["dry_run"] is True
    assert slash_unauth.status_code == 401
    assert bad_param.status_code == 400
    assert bad_method.status_code == 405
    assert health.status_code in (200, 503)
    for response in (unknown, slash_get, slash_post, slash_unauth, bad_param, bad_method, health):
        assert not response.is_redirect
        assert "location" not in response.headers
        _assert_clean(response)
