"""The local test servers themselves work (so a failure elsewhere is about the service)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import httpx

from tests.servers import HttpCapture, SmtpSink


def test_smtp_sink_receives_a_message(smtp_sink: SmtpSink) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "hi"
    message.set_content("body")
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as smtp:
        smtp.send_message(message)
    assert [m["Subject"] for m in smtp_sink.messages()] == ["hi"]


def test_http_capture_records_posts(http_capture: HttpCapture) -> None:
    httpx.post(http_capture.url + "/hook", json={"x": 1})
    assert http_capture.requests[0].json() == {"x": 1}
