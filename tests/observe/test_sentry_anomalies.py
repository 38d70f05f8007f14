"""An unusual run reaches Sentry beside its check-ins: one warning event carrying the marks,
in the trace of the run's check-in (Sentry keeps only the trace context on a check-in)."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope

from tests.conftest import FixedClock, make_settings
from tests.observe.sized_job import ClientFactory, SizedJob, run
from tests.support.servers import HttpCapture


@pytest.fixture
def sentry_server() -> Iterator[HttpCapture]:
    server = HttpCapture().start()
    yield server
    # The SDK is process-global: leave no client pointing at a server that is gone.
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)
    server.stop()


def _decoded(request: Any) -> bytes:
    encoding = request.headers.get("content-encoding", "")
    if encoding == "gzip":
        return gzip.decompress(request.body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(request.body))
    return bytes(request.body)


def _items(server: HttpCapture) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for request in server.requests:
        for item in Envelope.deserialize(_decoded(request)).items:
            payload = item.payload.get_bytes()
            out.append((item.type or "", json.loads(payload) if payload else {}))
    return out


def test_an_unusual_run_sends_its_marks_with_its_check_in(
        sentry_server: HttpCapture, make_client: ClientFactory, clock: FixedClock,
        db_url: str, tmp_path: Path) -> None:
    dsn = f"http://publickey@127.0.0.1:{sentry_server.server.server_address[1]}/1"
    job = SizedJob(clock)
    client = make_client(settings=make_settings(db_url, tmp_path, sentry_dsn=dsn),
                         jobs={"sized": job.spec("sized")})
    rng = random.Random(16)
    for _ in range(8):
        run(client, job, "sized", 40 * rng.uniform(0.9, 1.15), 4000)
    sentry_sdk.flush(timeout=5)
    assert [body for kind, body in _items(sentry_server) if kind == "event"] == []

    slow = run(client, job, "sized", 400, 4000)
    sentry_sdk.flush(timeout=5)
    items = _items(sentry_server)
    [event] = [body for kind, body in items if kind == "event"]
    assert event["level"] == "warning"
    assert event["message"].startswith("sized: unusual run: took 6.7 min, ")
    assert event["tags"]["anomaly"] == "slow" and event["tags"]["task"] == "sized"
    context = event["contexts"]["anomalies"]
    assert context["run_id"] == slow["run_id"]
    [mark] = context["marks"]
    assert mark["kind"] == "slow" and mark["value"] == 400_000 and mark["factor"] > 8
    checkins = [body for kind, body in items if kind == "check_in"]
    last = checkins[-1]
    assert last["status"] == "ok" and last["duration"] is not None
    assert last["contexts"]["trace"]["trace_id"] == event["contexts"]["trace"]["trace_id"]
