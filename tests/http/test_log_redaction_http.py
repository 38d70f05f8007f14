"""No secret reaches any log, the server's access log included: real HTTP, each supported way
to serve the app, JSON and text logs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, auth
from tests.support.servers import WAYS_TO_SERVE

pytestmark = pytest.mark.slow

GUESS = "guessed-secret-9f8e7d6c5b4a"
PASSWORD = "hunter2-dashboard-password"


@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.parametrize("way", sorted(WAYS_TO_SERVE))
def test_secrets_in_query_strings_never_reach_the_logs(
        way: str, log_format: str, db_url: str, tmp_path: Path) -> None:
    server = WAYS_TO_SERVE[way]({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": log_format,
        "DASHBOARD_USER": "ops", "DASHBOARD_PASSWORD": PASSWORD,
    }, cwd=tmp_path, log_level="info").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [
                http.get(f"/api/cron/promo-cleanup?secret={SECRET}"),
                http.get(f"/api/cron/promo-cleanup?dry_run=1&token={SECRET}"),
                http.post(f"/api/cron/promo-cleanup?secret={GUESS}", headers=auth(GUESS)),
                http.get(f"/health?token={SECRET}"),
                http.get(f"/health?access_token={GUESS}"),
                http.get(f"/metrics?password={PASSWORD}", headers=auth(GUESS)),
                http.get(f"/dashboard/?api_key={GUESS}", auth=("ops", PASSWORD)),
            ]
    finally:
        server.stop()
    assert [a.status_code for a in answers][:3] == [401, 401, 401]
    out = server.captured
    for secret in (SECRET, GUESS, PASSWORD):
        assert secret not in out, out
    if way != "vercel":  # Vercel's runtime turns uvicorn's access log off
        assert "/api/cron/promo-cleanup?secret=[redacted]" in out, out
        assert "/health?token=[redacted]" in out, out
