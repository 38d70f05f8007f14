"""Structured JSON log lines: run fields present, secrets and email addresses absent."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.logs import configure_logging
from tests.conftest import SECRET, auth, make_settings


@pytest.fixture
def log_stream(db_url: str, tmp_path: Path) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(make_settings(db_url, tmp_path, smtp_pass="smtp-password-xyz"), stream)
    yield stream
    configure_logging(make_settings(db_url, tmp_path), sys.stderr)
    handler = logging.getLogger("app").handlers
    assert len([h for h in handler if h.get_name() == "voyagesmart-cron"]) == 1


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_run_is_logged_as_one_json_line(log_stream: io.StringIO,
                                        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    body = client.post("/api/cron/promo-cleanup?force=1", headers=auth()).json()
    finished = [line for line in _lines(log_stream) if line["message"] == "run finished"]
    assert len(finished) == 1
    line = finished[0]
    assert (line["task"], line["run_id"], line["status"]) == ("promo-cleanup", body["run_id"],
                                                              "success")
    assert isinstance(line["duration_ms"], int) and line["level"] == "info"


def test_secrets_and_emails_are_redacted(log_stream: io.StringIO) -> None:
    log = logging.getLogger("app.jobs.example")
    log.info("mailing jane.doe@example.org with %s", SECRET, extra={"to": "bob@example.net"})
    log.warning("smtp login smtp-password-xyz refused; header Bearer abc.def-123")
    log.debug("debug may name joe@example.com")
    text = log_stream.getvalue()
    for leaked in ("jane.doe@example.org", "bob@example.net", SECRET, "smtp-password-xyz",
                   "abc.def-123"):
        assert leaked not in text
    info, warning = _lines(log_stream)[:2]
    assert info["message"] == "mailing [email] with [redacted]" and info["to"] == "[email]"
    assert warning["message"] == "smtp login [redacted] refused; header Bearer [redacted]"


def test_records_of_any_logger_are_redacted_with_their_arguments_kept_apart(
        tmp_path: Path) -> None:
    configure_logging(make_settings("sqlite://", tmp_path))
    stream = io.StringIO()
    foreign = logging.getLogger("uvicorn.access.test")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    foreign.addHandler(handler)
    foreign.setLevel(logging.INFO)
    foreign.propagate = False
    try:
        foreign.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                     f"/api/cron/x?dry_run=1&secret={SECRET}&page=2&access_token=abc123&key=k9",
                     "1.1", 401)
        foreign.info("header Authorization: Bearer abc.def-ghi and %s", {"a": 1})
        try:
            raise RuntimeError(f"could not use {SECRET}")
        except RuntimeError:
            foreign.exception("failed")
    finally:
        foreign.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "abc123" not in text and "abc.def-ghi" not in text, text
    assert "k9" not in text
    assert ('"GET /api/cron/x?dry_run=1&secret=[redacted]&page=2&access_token=[redacted]'
            '&key=[redacted] HTTP/1.1" 401') in text
    assert "could not use [redacted]" in text
