"""A composed user email reads back, through the email package, as what was rendered."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from app.mail.smtp import Mailer
from tests.conftest import make_settings

# Long enough that a folding header writer would split it.
LINK = ("https://cron.example.com/unsubscribe?token="
        "AQH21pBcZpRDJLTlebe7IKl8.0Fik75bAMDaQYvZAwNhksA")
PAYLOAD = {
    "recipient_name": "Zoë Ünal",
    "days_ahead": 7,
    "trip": {"name": "Ōsaka & Kyōto — a very long trip name that will not fit on one line",
             "destination": "Kyōto", "start_date": "2026-12-05", "end_date": "2026-12-11",
             "participants": 3, "url": "https://app.example.com/trips/t1"},
}


def test_non_ascii_headers_and_bodies_survive_the_wire(tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path, mail_from="Voyage Smärt <trips@example.com>",
                             app_base_url="https://app.example.com")
    out = Mailer(settings).compose("trip_reminder", "zoe@example.com", "en", PAYLOAD,
                                   unsubscribe_url=LINK,
                                   key="trip_reminder:7d:t1:u1:2026-12-05")
    assert out.data.isascii() and all(len(line) <= 998 for line in out.data.split(b"\r\n"))
    assert b"\n" not in out.data.replace(b"\r\n", b"")
    message = email.message_from_bytes(out.data, policy=email.policy.default)

    assert message["Subject"] == f"{PAYLOAD['trip']['name']} starts in 7 days"  # type: ignore[index]
    assert message["From"].addresses[0].display_name == "Voyage Smärt"
    assert message["From"].addresses[0].addr_spec == "trips@example.com"
    assert message["To"] == "zoe@example.com"
    assert message["List-Unsubscribe"] == f"<{LINK}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"] == out.message_id
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "Hi Zoë Ünal," in text.get_content()  # type: ignore[attr-defined]
    assert "Ōsaka &amp; Kyōto" in html.get_content()  # type: ignore[attr-defined]
    assert (out.sender, out.recipient) == ("trips@example.com", "zoe@example.com")


def test_the_same_notification_keeps_its_message_id(tmp_path: Path) -> None:
    mailer = Mailer(make_settings("sqlite://", tmp_path))
    first = mailer.compose("trip_reminder", "a@example.com", "en", PAYLOAD,
                           unsubscribe_url=LINK, key="k1")
    again = mailer.compose("trip_reminder", "a@example.com", "en", PAYLOAD,
                           unsubscribe_url=LINK, key="k1")
    other = mailer.compose("trip_reminder", "a@example.com", "en", PAYLOAD,
                           unsubscribe_url=LINK, key="k2")
    assert first.message_id == again.message_id != other.message_id
