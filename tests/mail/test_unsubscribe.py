"""One-click unsubscribe (RFC 8058): signed links, the endpoint, the settings behind it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.mail.unsubscribe import ALL, TOKEN_LENGTH, Links
from tests.conftest import SECRET, make_settings, rows

KEY = "unsubscribe-key-0123456789-abcdefghijklmnopqrstuv"
OLD_KEY = "older-unsubscribe-key-0123456789-abcdefghijklmn"
USER = uuid.UUID("6f1c8a52-3b7e-4c1d-9a20-5e4f7b8c9d01")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"unsubscribe_secret": KEY,
                                 "service_base_url": "https://cron.example.com"}
    return make_settings("sqlite://", tmp_path, **{**values, **overrides})


# --- links ------------------------------------------------------------------------------


def test_a_link_names_its_user_and_list_and_nothing_else(tmp_path: Path) -> None:
    links = Links(_settings(tmp_path))
    url = links.url("trip_reminder", USER)
    token = url.removeprefix("https://cron.example.com/unsubscribe?token=")
    assert len(token) == TOKEN_LENGTH and token.isascii()
    assert str(USER) not in url and USER.hex not in url  # not readable as an id
    read = links.read(token)
    assert read is not None and (read.user_id, read.list) == (USER, "trip_reminder")
    assert links.read(links.token("user_engagement", USER)).list == "user_engagement"  # type: ignore[union-attr]


def test_a_link_cannot_be_made_or_changed_without_the_secret(tmp_path: Path) -> None:
    links = Links(_settings(tmp_path))
    token = links.token("trip_reminder", USER)
    other_key = Links(_settings(tmp_path, unsubscribe_secret="x" * 40))
    forged_elsewhere = other_key.token("trip_reminder", USER)
    other_user = links.token("trip_reminder", uuid.uuid4())
    bad = [
        forged_elsewhere,
        token[:-1] + ("A" if token[-1] != "A" else "B"),  # a changed signature
        other_user[:24] + token[24:],  # another user's id under this signature
        links.token("user_engagement", USER)[:24] + token[24:],  # another list
        token[:-2], token + "A", token.replace(".", "-"), "", "x" * TOKEN_LENGTH,
        token[:24] + "." + "=" * 22, "é" * TOKEN_LENGTH,
    ]
    assert [links.read(t) for t in bad] == [None] * len(bad)
    assert links.read(token) is not None


def test_links_of_the_previous_secret_keep_working_during_a_rotation(tmp_path: Path) -> None:
    old = Links(_settings(tmp_path, unsubscribe_secret=OLD_KEY)).token("trip_reminder", USER)
    rotated = Links(_settings(tmp_path, unsubscribe_secret_previous=OLD_KEY))
    assert rotated.read(old) is not None
    assert Links(_settings(tmp_path)).read(old) is None  # once the old one is gone, gone


# --- settings ---------------------------------------------------------------------------


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path}/u.db", "CRON_SECRET": SECRET,
            "SMTP_HOST": "smtp.example.com"}
    return subprocess.run([sys.executable, "-c", "import app.main"],
                          env={**base, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("env", "named"), [
    ({"SERVICE_BASE_URL": "https://cron.example.com"}, "UNSUBSCRIBE_SECRET is required"),
    ({"SERVICE_BASE_URL": "https://cron.example.com", "UNSUBSCRIBE_SECRET": "short-one"},
     "UNSUBSCRIBE_SECRET must be at least 32"),
    ({"SERVICE_BASE_URL": "https://cron.example.com", "UNSUBSCRIBE_SECRET": SECRET},
     "UNSUBSCRIBE_SECRET must differ from CRON_SECRET"),
    ({"UNSUBSCRIBE_SECRET": KEY}, "SERVICE_BASE_URL is required"),
    ({"UNSUBSCRIBE_SECRET": KEY, "SERVICE_BASE_URL": "cron.example.com"},
     "SERVICE_BASE_URL: must be an http:// or https:// URL"),
], ids=["missing", "short", "same-as-cron", "no-base-url", "bad-base-url"])
def test_production_refuses_unsigned_or_unaddressed_links_in_one_line(
        tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = _start(tmp_path, **env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "short-one" not in result.stderr


def test_production_starts_with_both_set(tmp_path: Path) -> None:
    result = _start(tmp_path, UNSUBSCRIBE_SECRET=KEY, SERVICE_BASE_URL="https://c.example.com")
    assert result.returncode == 0, result.stderr


# --- the endpoint -----------------------------------------------------------------------


@pytest.fixture
def links(tmp_path: Path, db_url: str) -> Links:
    return Links(make_settings(db_url, tmp_path, unsubscribe_secret=KEY))


@pytest.fixture
def unsub_client(make_client: Callable[..., TestClient], db_url: str, tmp_path: Path
                 ) -> TestClient:
    return make_client(settings=make_settings(db_url, tmp_path, unsubscribe_secret=KEY,
                                              auth_failure_limit=3,
                                              unsubscribe_rate_limit=6))


def _opt_outs(engine: Engine) -> list[tuple[str, str, str]]:
    return [(str(uuid.UUID(str(r[0]))), r[1], r[2]) for r in rows(
        engine, "SELECT user_id, list, source FROM cron_email_opt_out ORDER BY id")]


def test_opening_the_link_shows_a_button_and_unsubscribes_no_one(
        unsub_client: TestClient, links: Links, engine: Engine) -> None:
    token = links.token("trip_reminder", USER)
    page = unsub_client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200
    assert "Stop receiving trip reminders?" in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert "<script" not in page.text and KEY not in page.text
    assert _opt_outs(engine) == []  # a mail scanner following the link changes nothing


def test_the_one_click_post_records_the_opt_out_without_login(
        unsub_client: TestClient, links: Links, engine: Engine) -> None:
    token = links.token("trip_reminder", USER)
    first = unsub_client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)
    again = unsub_client.post("/unsubscribe/", params={"token": token}, data=ONE_CLICK)
    assert (first.status_code, again.status_code) == (200, 200)
    assert "You are unsubscribed from trip reminders" in first.text
    assert _opt_outs(engine) == [(str(USER), "trip_reminder", "one-click")]
    page = unsub_client.get("/unsubscribe", params={"token": token})
    assert "You are unsubscribed from trip reminders" in page.text


def test_a_multipart_one_click_post_counts_too(unsub_client: TestClient, links: Links,
                                               engine: Engine) -> None:
    token = links.token("user_engagement", USER)
    answer = unsub_client.post("/unsubscribe", params={"token": token},
                               files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200
    assert _opt_outs(engine) == [(str(USER), "user_engagement", "one-click")]


def test_the_page_can_unsubscribe_from_everything(unsub_client: TestClient, links: Links,
                                                  engine: Engine) -> None:
    token = links.token("user_engagement", USER)
    answer = unsub_client.post("/unsubscribe", params={"token": token},
                               data={**ONE_CLICK, "scope": ALL, "via": "page"})
    assert answer.status_code == 200 and "all trip reminders and news" in answer.text
    assert _opt_outs(engine) == [(str(USER), ALL, "page")]


@pytest.mark.parametrize("body", [{}, {"List-Unsubscribe": "yes"}, {"unsubscribe": "1"}])
def test_a_post_that_does_not_say_one_click_changes_nothing(
        unsub_client: TestClient, links: Links, engine: Engine, body: dict[str, str]) -> None:
    answer = unsub_client.post("/unsubscribe",
                               params={"token": links.token("trip_reminder", USER)}, data=body)
    assert answer.status_code == 400
    assert _opt_outs(engine) == []


def test_every_bad_link_gets_the_same_answer_and_is_counted(
        unsub_client: TestClient, links: Links, engine: Engine) -> None:
    good = links.token("trip_reminder", USER)
    forged = Links(make_settings("sqlite://", Path("."), unsubscribe_secret="f" * 40)
                   ).token("trip_reminder", USER)
    answers = [unsub_client.get("/unsubscribe", params={"token": forged}),
               unsub_client.post("/unsubscribe", params={"token": good[:-1] + "x"},
                                 data=ONE_CLICK),
               unsub_client.post("/unsubscribe", data=ONE_CLICK)]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert len({a.text for a in answers}) == 1
    assert "not valid" in answers[0].text and forged not in answers[0].text
    # The fourth bad link from this address is one too many; from then on, even a good
    # link waits (guessing links is as slow as guessing the cron secret).
    assert unsub_client.get("/unsubscribe", params={"token": "nope"}).status_code == 429
    blocked = unsub_client.post("/unsubscribe", params={"token": good}, data=ONE_CLICK)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert _opt_outs(engine) == []
    audit = rows(engine, "SELECT path, outcome FROM cron_audit_log ORDER BY id")
    assert audit[:3] == [("/unsubscribe", "auth_failed")] * 3
    assert all(good not in str(r) and forged not in str(r) for r in audit)


def test_valid_links_are_rate_limited_per_address(unsub_client: TestClient,
                                                  links: Links) -> None:
    tokens = [links.token("trip_reminder", uuid.uuid4()) for _ in range(7)]
    codes = [unsub_client.get("/unsubscribe", params={"token": t}).status_code
             for t in tokens]
    assert codes == [200] * 6 + [429]
