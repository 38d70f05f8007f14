"""The startup log of each real way to serve the app says "CANNOT SEE THE TCP PEER" only
where the peer really is out of reach.  uvicorn runs as a subprocess and its log is read.

FastAPI wraps the lifespan's `receive` inside its own `__call__`; the peer logic runs before
that (app/http/peer.py `PeerSeeingFastAPI`), so under uvicorn, `voyagesmart-cron serve`,
`fastapi run` and Vercel's runtime (which passes uvicorn's `receive` through) it sees the
connection.  Under a runtime that relays `receive` itself it cannot, and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.conftest import SECRET, auth, copy_sqlite_database, rows
from tests.support.servers import ROOT, WAYS_TO_SERVE, UvicornProcess

pytestmark = pytest.mark.slow

UNSEEN = "CANNOT SEE THE TCP PEER"
INSIDE = "10.0.0.5"


class HiddenPeerRuntime(UvicornProcess):
    name = "hidden-peer runtime"

    def argv(self) -> list[str]:
        return [sys.executable, str(ROOT / "tests" / "http" / "hidden_peer_runtime.py"),
                str(self.port)]


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only: what is tested is the server's startup, not the database."""
    target = tmp_path / "test.db"
    copy_sqlite_database(sqlite_template, target)
    return f"sqlite:///{target}"


def _env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
            "DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "text",
            "CRON_IP_ALLOWLIST": "10.0.0.0/8"}


def _forged_call(server: UvicornProcess) -> httpx.Response:
    url = f"{server.url}/api/cron/promo-cleanup?dry_run=1"
    return httpx.get(url, headers={**auth(), "X-Forwarded-For": INSIDE}, timeout=30)


@pytest.mark.parametrize("way", sorted(WAYS_TO_SERVE))
def test_no_peer_warning_where_the_server_shows_the_connection(
        way: str, db_url: str, tmp_path: Path, engine: Engine) -> None:
    server = WAYS_TO_SERVE[way](_env(db_url, tmp_path), cwd=tmp_path).start()
    try:
        forged = _forged_call(server)
    finally:
        server.stop()
    assert UNSEEN not in server.captured, server.captured
    # The peer is read from the connection: the forged header names no one.
    assert forged.status_code == 403, forged.text
    assert [r.client_ip for r in rows(engine, "SELECT client_ip FROM cron_audit_log")] \
        == ["127.0.0.1"]


def test_the_warning_stays_where_the_peer_is_really_unknown(
        db_url: str, tmp_path: Path, engine: Engine) -> None:
    server = HiddenPeerRuntime(_env(db_url, tmp_path), cwd=tmp_path).start()
    try:
        forged = _forged_call(server)
    finally:
        server.stop()
    assert server.captured.count(UNSEEN) == 1, server.captured
    # uvicorn wrote the forged address into the scope; the app counts it as unknown.
    assert forged.status_code == 403, forged.text
    assert [r.client_ip for r in rows(engine, "SELECT client_ip FROM cron_audit_log")] \
        == [None]
