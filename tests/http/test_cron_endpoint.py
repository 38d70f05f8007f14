"""The cron endpoint contract, through the ASGI app (real HTTP is in test_http_server.py)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.conftest import SECRET, auth, rows


def test_missing_header_is_401(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup")
    assert response.status_code == 401
    assert "Authorization" in response.json()["error"]
    assert response.headers["cache-control"] == "no-store"


def test_wrong_secret_is_401(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup", headers=auth("x" * 40))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid credentials"}


def test_secret_in_query_string_is_refused(client: TestClient) -> None:
    response = client.get(f"/api/cron/promo-cleanup?secret={SECRET}")
    assert response.status_code == 401
    assert "query string" in response.json()["error"]


def test_non_bearer_scheme_is_401(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup", headers={"Authorization": f"Basic {SECRET}"})
    assert response.status_code == 401


def test_oversize_header_is_400(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup", headers=auth("y" * 5000))
    assert response.status_code == 400


def test_get_and_post_run_the_task(client: TestClient, engine: Engine) -> None:
    first = client.get("/api/cron/promo-cleanup?force=true", headers=auth())
    second = client.post("/api/cron/promo-cleanup?force=1", headers=auth())
    for response in (first, second):
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["task"] == "promo-cleanup"
        assert body["status"] == "success"
        assert body["run_id"]
        assert {"records_processed", "duration_ms", "message"} <= set(body)
        assert response.headers["cache-control"] == "no-store"
    logged = rows(engine, "SELECT status FROM cron_job_log ORDER BY id")
    assert [r.status for r in logged] == ["success", "success"]


def test_unknown_task_is_404(client: TestClient) -> None:
    response = client.get("/api/cron/nope", headers=auth())
    assert response.status_code == 404
    assert "promo-cleanup" in response.json()["error"]


def test_trailing_slash_is_answered_without_redirect(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup/", headers=auth(), follow_redirects=False)
    assert response.status_code == 200
    assert response.json()["task"] == "promo-cleanup"


def test_unknown_query_parameter_is_400(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup?verbose=1", headers=auth())
    assert response.status_code == 400
    assert "verbose" in response.json()["error"]


def test_bad_flag_value_is_400(client: TestClient) -> None:
    response = client.get("/api/cron/promo-cleanup?dry_run=maybe", headers=auth())
    assert response.status_code == 400


def test_wrong_method_is_405(client: TestClient) -> None:
    response = client.delete("/api/cron/promo-cleanup", headers=auth())
    assert response.status_code == 405


def test_vercel_duplicate_delivery_is_answered_as_duplicate(client: TestClient,
                                                            engine: Engine) -> None:
    headers = {**auth(), "User-Agent": "vercel-cron/1.0"}
    first = client.get("/api/cron/promo-cleanup", headers=headers).json()
    second = client.get("/api/cron/promo-cleanup", headers=headers)
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert second.json()["run_id"] == first["run_id"]
    logged = rows(engine, "SELECT trigger, status FROM cron_job_log")
    assert [(r.trigger, r.status) for r in logged] == [("vercel", "success")]


def test_previous_secret_accepted_during_rotation(make_client: Any, settings: Any) -> None:
    rotated = settings.model_copy(update={
        "cron_secret": type(settings.cron_secret)("n" * 40),
        "cron_secret_previous": settings.cron_secret,
    })
    client = make_client(settings=rotated)
    assert client.get("/api/cron/promo-cleanup?force", headers=auth()).status_code == 200
    assert client.get("/api/cron/promo-cleanup?force", headers=auth("n" * 40)).status_code == 200


def test_disabled_jobs_answer_503(make_client: Any, settings: Any) -> None:
    client = make_client(settings=settings.model_copy(update={"enable_cron_jobs": False}))
    response = client.get("/api/cron/promo-cleanup", headers=auth())
    assert response.status_code == 503
    assert response.json()["status"] == "disabled"
