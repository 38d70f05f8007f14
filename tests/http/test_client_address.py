"""However the app is started, a client cannot choose its address with forwarding headers;
behind a trusted proxy every `X-Forwarded-For` line is read.  Real HTTP, each supported way
to serve the app (`voyagesmart-cron serve`, plain uvicorn, `fastapi run`, Vercel's runtime)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.main import create_app
from tests.conftest import SECRET, auth, make_settings, rows
from tests.support.servers import WAYS_TO_SERVE, UvicornProcess

pytestmark = pytest.mark.slow

INSIDE = "10.0.0.5"  # in the allowlist below
OUTSIDE = "203.0.113.66"
# Every way a client might try to name an address the allowlist admits.
FORGERIES: list[list[tuple[str, str]]] = [
    [("X-Forwarded-For", INSIDE)],
    [("x-forwarded-for", INSIDE)],
    [("X-FORWARDED-FOR", f"{INSIDE}:4711")],
    [("X-Forwarded-For", f"{INSIDE}, {INSIDE}")],
    [("X-Forwarded-For", INSIDE), ("X-Forwarded-For", INSIDE)],
    [("X-Forwarded-For", OUTSIDE), ("X-Forwarded-For", INSIDE)],
    [("X-Real-IP", INSIDE)],
    [("Forwarded", f"for={INSIDE}")],
    [("Forwarded", f'for="{INSIDE}:4711";proto=https')],
    [("X-Forwarded-For", INSIDE), ("X-Real-IP", INSIDE), ("Forwarded", f"for={INSIDE}")],
]


@pytest.fixture(params=sorted(WAYS_TO_SERVE))
def serve(request: pytest.FixtureRequest, db_url: str, tmp_path: Path
          ) -> Iterator[Callable[..., UvicornProcess]]:
    started: list[UvicornProcess] = []

    def start(**env: str) -> UvicornProcess:
        server = WAYS_TO_SERVE[request.param]({
            "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
            "DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "text", **env,
        }, cwd=tmp_path).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _audited_addresses(engine: Engine) -> list[str | None]:
    return [r.client_ip for r in rows(engine, "SELECT client_ip FROM cron_audit_log ORDER BY id")]


def test_forged_forwarding_headers_do_not_pass_the_allowlist(
        serve: Callable[..., UvicornProcess], engine: Engine) -> None:
    server = serve(CRON_IP_ALLOWLIST="10.0.0.0/8")
    url = f"{server.url}/api/cron/promo-cleanup?dry_run=1"
    with httpx.Client(timeout=30) as http:
        answers = [http.get(url, headers=[*auth().items(), *forged]) for forged in FORGERIES]
    assert [a.status_code for a in answers] == [403] * len(FORGERIES), [a.text for a in answers]
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 0
    assert set(_audited_addresses(engine)) == {"127.0.0.1"}


def test_a_bad_token_flood_with_a_new_forged_address_each_time_meets_429(
        serve: Callable[..., UvicornProcess], engine: Engine) -> None:
    server = serve(AUTH_FAILURE_LIMIT="5")
    url = f"{server.url}/api/cron/promo-cleanup"
    with httpx.Client(timeout=30) as http:
        codes = [http.get(url, headers={**auth(f"guess-{i:03d}" * 4),
                                        "X-Forwarded-For": f"198.51.100.{i}",
                                        "X-Real-IP": f"192.0.2.{i}"}).status_code
                 for i in range(40)]
    assert codes == [401] * 5 + [429] * 35
    assert set(_audited_addresses(engine)) == {"127.0.0.1"}


def test_behind_a_trusted_proxy_every_forwarded_for_line_is_read(
        serve: Callable[..., UvicornProcess], engine: Engine) -> None:
    server = serve(CRON_IP_ALLOWLIST="10.0.0.0/8", TRUSTED_PROXIES="127.0.0.1/32")
    url = f"{server.url}/api/cron/promo-cleanup?dry_run=1"
    cases: list[tuple[list[tuple[str, str]], int, str]] = [
        ([("X-Forwarded-For", INSIDE)], 200, INSIDE),
        # Two lines are one list: the right-most hop the proxy appended is the client.
        ([("X-Forwarded-For", INSIDE), ("X-Forwarded-For", OUTSIDE)], 403, OUTSIDE),
        ([("X-Forwarded-For", OUTSIDE), ("X-Forwarded-For", INSIDE)], 200, INSIDE),
        ([("X-Forwarded-For", f"{INSIDE}, 10.9.9.9"), ("X-Forwarded-For", OUTSIDE)],
         403, OUTSIDE),
        # X-Real-IP and Forwarded are never read, not even from a trusted proxy.
        ([("X-Real-IP", INSIDE)], 403, "127.0.0.1"),
        ([("Forwarded", f"for={INSIDE}")], 403, "127.0.0.1"),
    ]
    with httpx.Client(timeout=30) as http:
        answers = [http.get(url, headers=[*auth().items(), *headers])
                   for headers, _code, _address in cases]
    assert [a.status_code for a in answers] == [code for _h, code, _a in cases], \
        [a.text for a in answers]
    assert _audited_addresses(engine) == [address for _h, _c, address in cases]


# --- a server whose connection the app cannot reach ------------------------------------------

def test_where_the_peer_is_unseen_a_self_named_address_is_unknown_and_said_loudly(
        engine: Engine, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Starlette's TestClient exposes no connection, like an ASGI server that rewrote
    # scope["client"] from the request's own header.
    settings = make_settings(db_url, tmp_path, cron_ip_allowlist="10.0.0.0/8")
    app = create_app(settings, engine=engine)
    caplog.set_level(logging.WARNING, logger="app.http.peer")
    with TestClient(app, client=(INSIDE, 0), raise_server_exceptions=False) as client:
        assert any("CANNOT SEE THE TCP PEER" in r.getMessage() for r in caplog.records)
        rewritten = client.get("/api/cron/promo-cleanup?dry_run=1",
                               headers={**auth(), "X-Forwarded-For": INSIDE})
        direct = client.get("/api/cron/promo-cleanup?dry_run=1", headers=auth())
    assert rewritten.status_code == 403
    assert direct.status_code == 200  # no header names it: the server's word is all there is
    assert _audited_addresses(engine) == [None, INSIDE]


def test_on_vercel_the_startup_log_says_how_to_read_client_addresses(
        db_url: str, tmp_path: Path) -> None:
    from tests.support.servers import VercelRuntimeProcess

    env: dict[str, Any] = {"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
                           "DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "text"}
    server = VercelRuntimeProcess(env, cwd=tmp_path).start()
    server.stop()
    assert "TRUSTED_PROXIES=127.0.0.1/32" in server.captured, server.captured
    trusted = VercelRuntimeProcess({**env, "TRUSTED_PROXIES": "127.0.0.1/32"},
                                   cwd=tmp_path).start()
    trusted.stop()
    assert "TRUSTED_PROXIES" not in trusted.captured
