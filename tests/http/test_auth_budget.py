"""One failed-authentication budget per address, shared by every surface, never locking out
the valid credential of any of them; `/health` with a bearer is counted like the rest."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.main import create_app
from tests.conftest import SECRET, FixedClock, auth, make_settings, rows

ATTACKER = "203.0.113.66"
USER, PASSWORD = "ops", "dashboard-password-123"
METRICS_TOKEN = "metrics-token-0123456789"
LIMIT = 10


@pytest.fixture
def from_attacker(engine: Engine, db_url: str, tmp_path: Path, clock: FixedClock
                  ) -> TestClient:
    settings = make_settings(db_url, tmp_path, auth_failure_limit=LIMIT,
                             dashboard_user=USER, dashboard_password=PASSWORD,
                             metrics_token=METRICS_TOKEN)
    app = create_app(settings, engine=engine, clock=clock)
    return TestClient(app, raise_server_exceptions=False, client=(ATTACKER, 40000))


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _audit(engine: Engine) -> list[Any]:
    return rows(engine, "SELECT path, outcome, status_code FROM cron_audit_log ORDER BY id")


def test_valid_credentials_of_each_surface_pass_while_the_address_is_blocked(
        from_attacker: TestClient) -> None:
    client = from_attacker
    codes = [client.get("/api/cron/promo-cleanup", headers=auth(f"guess-{i:02d}" * 4)
                        ).status_code for i in range(LIMIT + 1)]
    assert codes == [401] * LIMIT + [429]
    # Blocked for failures: every wrong credential, on every surface, meets 429 ...
    assert client.get("/dashboard/", headers=_basic(USER, "wrong")).status_code == 429
    assert client.get("/metrics", headers=auth("wrong-token-x" * 3)).status_code == 429
    assert client.get("/health", headers=auth("wrong-token-x" * 3)).status_code == 429
    # ... while the right one still works on each.
    assert client.get("/dashboard/", headers=_basic(USER, PASSWORD)).status_code == 200
    assert client.get("/metrics", headers=auth(METRICS_TOKEN)).status_code == 200
    assert client.get("/metrics", headers=auth()).status_code == 200
    detailed = client.get("/health", headers=auth())
    assert detailed.status_code in (200, 503) and "jobs" in detailed.json()
    assert client.post("/api/cron/promo-cleanup?force=1", headers=auth()).status_code == 200
    # And an uptime monitor without any credential is still answered.
    assert client.get("/health").status_code in (200, 503)


def test_a_wrong_bearer_on_health_is_counted_and_audited(from_attacker: TestClient,
                                                         engine: Engine) -> None:
    client = from_attacker
    answers = [client.get("/health", headers=auth(f"guess-{i:03d}" * 4)) for i in range(200)]
    codes = [a.status_code for a in answers]
    assert codes[:LIMIT] == [401] * LIMIT
    assert set(codes[LIMIT:]) == {429}
    assert all("jobs" not in a.json() for a in answers)
    assert answers[0].json()["error"] == "invalid credentials"
    assert answers[0].headers["www-authenticate"].startswith("Bearer")
    logged = _audit(engine)
    assert [(r.path, r.outcome, r.status_code) for r in logged] == (
        [("/health", "auth_failed", 401)] * LIMIT + [("/health", "rate_limited", 429)])
    # The budget is the same one the cron endpoint uses.
    assert client.get("/api/cron/promo-cleanup", headers=auth("x" * 40)).status_code == 429
    # Without a bearer the uptime monitor still gets its answer.
    public = client.get("/health")
    assert public.status_code in (200, 503) and "issues" in public.json()


def test_a_malformed_authorization_on_health_is_a_failure_too(
        from_attacker: TestClient, engine: Engine) -> None:
    response = from_attacker.get("/health", headers={"Authorization": "Token abc"})
    assert response.status_code == 401
    assert [r.outcome for r in _audit(engine)] == ["auth_failed"]
    assert SECRET not in response.text
