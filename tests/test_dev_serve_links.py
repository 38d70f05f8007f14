"""`python3 dev.py serve --port N`: the unsubscribe links in the mails the demo sends point at
the port the service runs on, unless SERVICE_BASE_URL says otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port
from tests.test_dev_serve import _serve, _stop, _wait_ready, checkout

pytestmark = pytest.mark.slow
__all__ = ["checkout"]


def _unsubscribe_links(repo: Path, url: str, task: str) -> set[str]:
    secret = re.search(r"^CRON_SECRET=(.+)$", (repo / ".env").read_text(), re.MULTILINE)
    assert secret is not None
    answer = httpx.post(f"{url}/api/cron/{task}?force=true", timeout=120,
                        headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert answer.status_code == 200, answer.text
    mails = [p.read_text() for p in (repo / "data" / "outbox").glob("*.eml")]
    assert mails, answer.text
    return {m.group(1) for text in mails
            for m in re.finditer(r"List-Unsubscribe: <(https?://[^/>]+)/unsubscribe", text)}


def test_dev_serve_on_another_port_puts_that_port_in_the_unsubscribe_links(
        checkout: Path) -> None:
    port = free_port()
    proc, _lines = _serve(checkout, ["--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        assert _unsubscribe_links(checkout, url, "user-engagement") == {url}
    finally:
        _stop(proc)


def test_dev_serve_keeps_the_service_base_url_of_env_file(checkout: Path) -> None:
    (checkout / ".env").write_text("SERVICE_BASE_URL=https://cron.example.com\n")
    port = free_port()
    proc, _lines = _serve(checkout, [f"--port={port}"])
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        assert _unsubscribe_links(checkout, url, "user-engagement") == {
            "https://cron.example.com"}
    finally:
        _stop(proc)
