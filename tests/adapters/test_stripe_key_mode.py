"""A test Stripe key in production, or a live one outside it, is said loudly: at startup
(the log) and on /health (an issue in production, a warning elsewhere)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.adapters.stripe_key import key_mode, key_mode_problem
from tests.conftest import make_settings

TEST_KEY = "sk_test_51AbCdEfGhIjKlMnOpQrStUv"
LIVE_KEY = "rk_live_51AbCdEfGhIjKlMnOpQrStUv"


def test_the_mode_comes_from_the_key_prefix() -> None:
    assert key_mode("sk_test_x") == key_mode("rk_test_x") == "test"
    assert key_mode("sk_live_x") == key_mode("rk_live_x") == "live"
    assert key_mode("pk_live_x") is None and key_mode(None) is None


def test_a_test_key_in_production_makes_health_unhealthy(
        db_url: str, tmp_path: Path, make_client: Callable[..., TestClient],
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(db_url, tmp_path, app_env="production",
                             stripe_secret_key=TEST_KEY)
    with caplog.at_level(logging.WARNING, logger="app"):
        client = make_client(settings=settings)
    [record] = [r for r in caplog.records if "STRIPE_SECRET_KEY" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "test-mode key in production" in record.getMessage()
    assert TEST_KEY not in caplog.text

    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert any("test-mode key in production" in issue for issue in body["issues"])
    assert TEST_KEY not in response.text


def test_a_live_key_outside_production_is_a_warning(
        db_url: str, tmp_path: Path, make_client: Callable[..., TestClient],
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(db_url, tmp_path, app_env="development",
                             stripe_secret_key=LIVE_KEY)
    with caplog.at_level(logging.WARNING, logger="app"):
        client = make_client(settings=settings)
    [record] = [r for r in caplog.records if "STRIPE_SECRET_KEY" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "live-mode key outside production (APP_ENV=development)" in record.getMessage()

    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["issues"] == []
    assert any("live-mode key outside production" in w for w in body["warnings"])
    assert LIVE_KEY not in response.text


def test_matching_keys_say_nothing(tmp_path: Path) -> None:
    for env, key in (("production", LIVE_KEY), ("development", TEST_KEY),
                     ("production", None), ("test", TEST_KEY)):
        settings = make_settings(f"sqlite:///{tmp_path}/x.db", tmp_path, app_env=env,
                                 stripe_secret_key=key)
        assert key_mode_problem(settings) is None
