"""One Jinja environment (app/mail/templates.py) renders user emails, the monthly report and
the web pages: markup from data is escaped in HTML and left as written in text."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from app.http import dashboard, unsubscribe
from app.mail.templates import ENV, render, template

MARKUP = "<script>alert(1)</script> & co"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"


def test_the_pages_render_through_the_one_environment() -> None:
    assert dashboard.TEMPLATES.env is ENV
    assert unsubscribe.TEMPLATES.env is ENV


def test_html_templates_are_escaped_and_text_templates_are_not() -> None:
    names = ENV.list_templates(extensions=["html", "txt"])
    assert {"subscription_report.html", "subscription_report.txt", "unsubscribe.html",
            "dashboard/index.html", "email/trip_reminder/en/body.html"} <= set(names)
    assert callable(ENV.autoescape)
    for name in names:
        assert ENV.autoescape(name) is name.endswith(".html"), name


def test_a_user_email_escapes_data_in_html_only() -> None:
    payload = {"recipient_name": MARKUP, "days_ahead": 7,
               "unsubscribe_url": "https://cron.example.com/unsubscribe?token=t",
               "trip": {"name": "Lisbon", "destination": "Lisbon", "start_date": "2026-12-05",
                        "end_date": "2026-12-11", "participants": 2,
                        "url": "https://app.example.com/trips/t1"}}
    rendered = render("trip_reminder", "en", payload)

    assert ESCAPED in rendered.html and MARKUP not in rendered.html
    assert MARKUP in rendered.text
    assert rendered.text.endswith("\n")  # the body keeps its last line end


def _report() -> dict[str, Any]:
    figures = {"active": 3, "new": 1, "canceled": 0, "mrr": "30.00", "currency": "EUR",
               "price": "10.00"}
    totals = {"active": 3, "new": 1, "canceled": 0, "net_change": 1, "churn_rate": None,
              "mrr": {"EUR": "30.00"}}
    change = {"active": 1, "new": 1, "canceled": 0, "mrr": {"EUR": "+10.00"}}
    return {"month": "2026-11", "corrections": [], "tiers": {"premium": figures},
            "totals": totals, "change": change,
            "previous": {"month": "2026-10", "tiers": {"premium": figures}, "totals": totals},
            "grants": {"by_source": {"promo_code": {"premium": 2}}},
            "warnings": [MARKUP]}


def test_the_report_escapes_data_in_html_only() -> None:
    report = _report()
    context = {"report": report, "tiers": list(report["tiers"].items())}
    html = template("subscription_report.html").render(context)
    text = template("subscription_report.txt").render(context)

    assert ESCAPED in html and MARKUP not in html
    assert MARKUP in text


def test_the_unsubscribe_page_escapes_the_list_name() -> None:
    page = template("unsubscribe.html").render(state="ask", list_name=MARKUP, everything=False)

    assert ESCAPED in page and MARKUP not in page


def test_a_name_missing_from_the_context_fails_the_render() -> None:
    with pytest.raises(jinja2.UndefinedError):
        template("unsubscribe.html").render(state="ask")
