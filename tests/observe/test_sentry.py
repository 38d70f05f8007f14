"""Sentry: the real sentry-sdk sends its envelopes to a local HTTP server, read back here."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from fastapi.testclient import TestClient
from sentry_sdk.envelope import Envelope
from sqlalchemy.engine import Engine

from app.core.context import JobContext, JobResult
from app.core.registry import JOBS, JobSpec, RetryPolicy
from tests.conftest import SECRET, auth, make_settings
from tests.support.servers import HttpCapture

LEAKY_EMAIL = "alice.traveller@example.com"


def _fail(ctx: JobContext) -> JobResult:
    raise ValueError(f"could not reach {LEAKY_EMAIL} using {SECRET}")


def _body(request: Any) -> bytes:
    encoding = request.headers.get("content-encoding", "")
    if encoding == "gzip":
        return gzip.decompress(request.body)
    if encoding == "deflate":
        return zlib.decompress(request.body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(request.body))
    return bytes(request.body)


@pytest.fixture
def sentry_server() -> Iterator[HttpCapture]:
    server = HttpCapture().start()
    yield server
    # The SDK is process-global: leave no client pointing at a server that is gone.
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)
    server.stop()


def _items(server: HttpCapture) -> list[tuple[str, dict[str, Any], bytes]]:
    out = []
    for request in server.requests:
        assert request.path == "/api/1/envelope/", request.path
        raw = _body(request)
        for item in Envelope.deserialize(raw).items:
            payload = item.payload.get_bytes()
            out.append((item.type or "", json.loads(payload) if payload else {}, raw))
    return out


def test_checkins_and_errors_reach_sentry(sentry_server: HttpCapture,
                                          make_client: Callable[..., TestClient],
                                          engine: Engine, db_url: str, tmp_path: Path) -> None:
    failing = JobSpec(name="always-fails", schedule="30 6 * * 1", func=_fail,
                      description="fails", retry=RetryPolicy(attempts=1))
    dsn = f"http://publickey@127.0.0.1:{sentry_server.server.server_address[1]}/1"
    settings = make_settings(db_url, tmp_path, sentry_dsn=dsn)
    client = make_client(settings=settings, jobs={**JOBS, failing.name: failing})

    ok = client.post("/api/cron/promo-cleanup?force=1", headers=auth())
    failed = client.post("/api/cron/always-fails?force=1", headers=auth())
    dry = client.post("/api/cron/promo-cleanup?dry_run=1", headers=auth())
    assert (ok.status_code, failed.status_code, dry.status_code) == (200, 500, 200)
    sentry_sdk.flush(timeout=5)
    assert sentry_sdk.get_client().should_send_default_pii() is False

    items = _items(sentry_server)
    checkins = [payload for kind, payload, _ in items if kind == "check_in"]
    assert [(c["monitor_slug"], c["status"]) for c in checkins] == [
        ("promo-cleanup", "in_progress"), ("promo-cleanup", "ok"),
        ("always-fails", "in_progress"), ("always-fails", "error"),
    ]  # the dry run sent none
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert checkins[2]["check_in_id"] == checkins[3]["check_in_id"]
    assert checkins[0]["check_in_id"] != checkins[2]["check_in_id"]
    assert checkins[1]["duration"] == pytest.approx(ok.json()["duration_ms"] / 1000, abs=0.01)
    assert "duration" in checkins[3]
    assert checkins[0]["monitor_config"] == {
        "schedule": {"type": "crontab", "value": "0 3 * * *"}, "timezone": "UTC",
        "checkin_margin": 180, "max_runtime": 5,
        "failure_issue_threshold": 1, "recovery_threshold": 1,
    }
    assert checkins[2]["monitor_config"]["schedule"]["value"] == "30 6 * * 1"
    assert checkins[2]["monitor_config"]["checkin_margin"] == 120

    events = [payload for kind, payload, _ in items if kind == "event"]
    [event] = [e for e in events if e.get("tags", {}).get("task") == "always-fails"]
    assert event["tags"]["run_id"] == failed.json()["run_id"]
    assert event["level"] == "error"
    assert "user" not in event
    # Nothing personal and no secret in anything the SDK sent.
    for _, _, raw in items:
        assert SECRET.encode() not in raw
        assert LEAKY_EMAIL.encode() not in raw
    assert "[Filtered]" in json.dumps(event) or "[redacted]" in json.dumps(event)


def test_no_sentry_without_dsn(client: TestClient) -> None:
    assert client.app.state.observers == []  # type: ignore[attr-defined]
    assert not sentry_sdk.get_client().is_active()
