"""IP allowlist, trusted proxies, rate limits, audit log and security headers on /api/cron/*."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.http.guard import _networks, client_address
from app.main import create_app
from tests.conftest import SECRET, FixedClock, auth, make_settings, rows

SCHEDULER = "198.51.100.10"
ATTACKER = "203.0.113.66"
PROXY = "10.0.0.5"
VERCEL_UA = {"User-Agent": "vercel-cron/1.0"}


@pytest.fixture
def client_from(engine: Engine, db_url: str, tmp_path: Path, clock: FixedClock
                ) -> Iterator[Callable[..., TestClient]]:
    """A client whose TCP peer is `address`, on an app built with the given settings."""
    clients: list[TestClient] = []

    def factory(address: str, **overrides: Any) -> TestClient:
        settings = make_settings(db_url, tmp_path, **overrides)
        app = create_app(settings, engine=engine, clock=clock)
        client = TestClient(app, raise_server_exceptions=False, client=(address, 40000))
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def audit(engine: Engine) -> list[Any]:
    return rows(engine, "SELECT client_ip, user_agent, method, path, task, outcome, "
                        "status_code, run_id FROM cron_audit_log ORDER BY id")


def test_client_address_believes_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = _networks(["10.0.0.0/8"])
    assert client_address("10.0.0.5", "198.51.100.10", trusted) == "198.51.100.10"
    # The client prepends a forged hop; the proxy appends the real peer: the right wins.
    assert client_address("10.0.0.5", "1.2.3.4, 198.51.100.10", trusted) == "198.51.100.10"
    # Chains of trusted proxies are skipped from the right.
    assert client_address("10.0.0.5", "198.51.100.10, 10.0.0.9", trusted) == "198.51.100.10"
    # A direct client's header is ignored.
    assert client_address("203.0.113.66", "198.51.100.10", trusted) == "203.0.113.66"
    assert client_address("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"
    assert client_address("10.0.0.5", None, trusted) == "10.0.0.5"


def test_allowlist_without_proxy(client_from: Callable[..., TestClient],
                                 engine: Engine) -> None:
    allow = {"cron_ip_allowlist": "198.51.100.0/24"}
    ok = client_from(SCHEDULER, **allow).get("/api/cron/promo-cleanup?force=1",
                                             headers={**auth(), **VERCEL_UA})
    assert ok.status_code == 200, ok.text
    refused = client_from(ATTACKER, **allow).get("/api/cron/promo-cleanup", headers=auth())
    assert refused.status_code == 403
    assert refused.json() == {"error": "this address may not call the cron endpoints"}
    # Spoofing the header without a trusted proxy in between changes nothing.
    spoofed = client_from(ATTACKER, **allow).get(
        "/api/cron/promo-cleanup", headers={**auth(), "X-Forwarded-For": SCHEDULER})
    assert spoofed.status_code == 403
    logged = audit(engine)
    assert [(r.client_ip, r.outcome, r.status_code) for r in logged] == [
        (SCHEDULER, "success", 200), (ATTACKER, "ip_refused", 403), (ATTACKER, "ip_refused", 403)]
    assert logged[0].user_agent == "vercel-cron/1.0"
    assert logged[0].task == "promo-cleanup" and logged[0].run_id is not None
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 1


def test_allowlist_behind_trusted_proxy(client_from: Callable[..., TestClient],
                                        engine: Engine) -> None:
    settings = {"cron_ip_allowlist": "198.51.100.0/24", "trusted_proxies": "10.0.0.0/8"}
    via_proxy = client_from(PROXY, **settings)
    ok = via_proxy.get("/api/cron/promo-cleanup?force=1",
                       headers={**auth(), "X-Forwarded-For": SCHEDULER})
    assert ok.status_code == 200, ok.text
    # Through the proxy, a forged left-most hop does not hide the real client.
    forged = via_proxy.get("/api/cron/promo-cleanup?force=1",
                           headers={**auth(), "X-Forwarded-For": f"{SCHEDULER}, {ATTACKER}"})
    assert forged.status_code == 403
    assert [(r.client_ip, r.status_code) for r in audit(engine)] == [
        (SCHEDULER, 200), (ATTACKER, 403)]


def test_bad_token_flood_is_limited_while_scheduler_calls_succeed(
        client_from: Callable[..., TestClient], engine: Engine, clock: FixedClock) -> None:
    limits = {"auth_failure_limit": 5, "auth_failure_window_seconds": 600}
    attacker = client_from(ATTACKER, **limits)
    scheduler = client_from(SCHEDULER, **limits)
    statuses = [attacker.get("/api/cron/promo-cleanup", headers=auth(f"guess-{i}" * 4)
                             ).status_code for i in range(30)]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    refused = attacker.get("/api/cron/promo-cleanup", headers=auth("guess-x" * 4))
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 600
    # The scheduler, from its own address, is neither blocked nor slowed.
    ok = scheduler.get("/api/cron/promo-cleanup", headers={**auth(), **VERCEL_UA})
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    # Even the attacker's address gets through with the real secret: the failure budget
    # is separate, so a flood from a shared egress address cannot lock the scheduler out.
    assert attacker.post("/api/cron/promo-cleanup?force=1", headers=auth()).status_code == 200

    outcomes = [(r.client_ip, r.outcome) for r in audit(engine)]
    assert outcomes.count((ATTACKER, "auth_failed")) == 5
    # One audit row when the block starts; the rest of the flood is answered from memory.
    assert outcomes.count((ATTACKER, "rate_limited")) == 1
    assert (SCHEDULER, "success") in outcomes
    stored = rows(engine, "SELECT * FROM cron_audit_log")
    assert not any("guess" in str(value) or SECRET in str(value)
                   for row in stored for value in row)

    # A new window lets the address try again.
    clock.advance(seconds=601)
    assert attacker.get("/api/cron/promo-cleanup",
                        headers=auth("again" * 8)).status_code == 401


def test_failure_limit_holds_across_instances(client_from: Callable[..., TestClient]) -> None:
    limits = {"auth_failure_limit": 3}
    first, second = client_from(ATTACKER, **limits), client_from(ATTACKER, **limits)
    for client in (first, second, first):
        assert client.get("/api/cron/promo-cleanup", headers=auth("nope" * 10)
                          ).status_code == 401
    # The fourth failure lands on the other instance, which has never seen this address.
    assert second.get("/api/cron/promo-cleanup", headers=auth("nope" * 10)).status_code == 429


def test_valid_calls_are_rate_limited_per_address(client_from: Callable[..., TestClient],
                                                  engine: Engine) -> None:
    client = client_from(SCHEDULER, cron_rate_limit=3, cron_rate_window_seconds=60)
    codes = [client.get("/api/cron/promo-cleanup?dry_run=1", headers=auth()).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert rows(engine, "SELECT outcome FROM cron_audit_log ORDER BY id")[-1].outcome == \
        "rate_limited"


def test_query_string_secret_is_an_audited_failure(client_from: Callable[..., TestClient],
                                                   engine: Engine) -> None:
    client = client_from(ATTACKER)
    response = client.get(f"/api/cron/promo-cleanup?secret={SECRET}", headers=auth())
    assert response.status_code == 401
    [row] = audit(engine)
    assert (row.outcome, row.path) == ("auth_failed", "/api/cron/promo-cleanup")
    assert SECRET not in str(tuple(row))


def test_audit_rows_are_pruned_after_retention(client_from: Callable[..., TestClient],
                                               engine: Engine, clock: FixedClock) -> None:
    client = client_from(SCHEDULER, audit_retention_days=30)
    client.get("/api/cron/promo-cleanup", headers=auth("wrong" * 8))
    assert len(audit(engine)) == 1
    clock.advance(days=31)
    client.get("/api/cron/promo-cleanup", headers=auth("wrong" * 8))
    # The old row is gone, the new one stays; spent rate-limit windows went with it.
    assert len(audit(engine)) == 1
    assert rows(engine, "SELECT count(*) AS n FROM cron_rate_limit")[0].n == 1


def test_security_headers_on_every_response(client_from: Callable[..., TestClient]) -> None:
    client = client_from(SCHEDULER, cron_ip_allowlist="192.0.2.0/24")
    for response in (client.get("/health"), client.get("/api/cron/promo-cleanup"),
                     client.get("/nowhere"), client.get("/metrics")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"


def test_openapi_docs_hidden_in_production(db_url: str, tmp_path: Path, engine: Engine) -> None:
    settings = make_settings(db_url, tmp_path, app_env="production")
    with TestClient(create_app(settings, engine=engine)) as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
        assert "strict-transport-security" in client.get("/health").headers


def test_prune_keeps_recent_windows(engine: Engine, db_url: str, tmp_path: Path,
                                    clock: FixedClock) -> None:
    from app.http.guard import Defenses

    defenses = Defenses(make_settings(db_url, tmp_path), engine, clock)
    assert defenses.hit("k", 5, 60) is None
    assert defenses.prune(clock.now) == (0, 0)
    assert defenses.prune(clock.now + dt.timedelta(hours=2)) == (0, 1)


def test_calls_with_the_previous_secret_are_marked_in_the_audit_log(
    client_from: Callable[..., TestClient], engine: Engine
) -> None:
    new_secret = "n" * 40
    client = client_from(SCHEDULER, cron_secret=new_secret, cron_secret_previous=SECRET)
    old = client.post("/api/cron/promo-cleanup?force=true", headers=auth())
    new = client.post("/api/cron/promo-cleanup?force=true", headers=auth(new_secret))
    assert (old.status_code, new.status_code) == (200, 200)
    outcomes = [row.outcome for row in audit(engine)]
    assert outcomes == ["success+old_secret", "success"]
    assert all(SECRET not in str(tuple(row)) for row in audit(engine))
