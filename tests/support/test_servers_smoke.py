"""The local test servers themselves work (so a failure elsewhere is about the service)."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import httpx
import pytest

from tests.support.servers import HttpCapture, SmtpSink
from tests.support.stripe_servers import FaultProxy, LocalStripe, localstripe

__all__ = ["localstripe"]


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


def test_stopping_the_fault_proxy_mid_delay_prints_no_traceback(
        localstripe: LocalStripe, capfd: pytest.CaptureFixture[str]) -> None:
    proxy = FaultProxy(localstripe.url).start()
    proxy.inject(r"/v1/plans", delay=1.0, times=1)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(proxy.url + "/v1/plans", timeout=0.2,
                  headers={"Authorization": "Bearer sk_test_x"})
    proxy.stop()
    time.sleep(1.5)  # past the delay: a handler still running would now fail
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
