"""subscription-report: last month's subscriptions, emailed once to the admins, kept.

1. Compute the previous calendar month (UTC) and the month before it, per paid tier, from
   Stripe-paid subscriptions only (app/voyagesmart/subscription_facts.py): paid at month end, new,
   canceled, MRR (paid x the tier's monthly price from the `subscriptions` plan
   catalogue, in its currency).  A cancellation counts in the month the subscription
   actually ended (for one canceled at period end, the later of the request and the
   period end); `paused`, `incomplete` and `incomplete_expired` are not paid.  Then
   totals, net change (new - canceled) and churn (canceled over those paid at the month's
   start), and the change against the month before.  Granted tiers (the sign-up
   trigger's year, promo codes) are reported apart, as grants, never in MRR.
2. Compare the figures of both months with the reports already stored for them: a month
   already reported is never rewritten in silence.  History recorded late (a cancellation
   found by subscription-sync after the month was sent) changes a past month; each figure
   that differs is listed as a correction (reported, now) at the top of the email, in its
   subject and in the run's message.  Store the report, one row per month; a month whose
   report was already sent is left alone unless the run is forced.
3. Email it to `ADMIN_EMAILS` (HTML and text bodies from jinja2 templates, the figures as
   a CSV attachment), then mark the row sent.  Without recipients the report is stored
   and the run ends as `warning`.
4. Archive reports older than `REPORT_RETENTION_MONTHS`: flagged, never deleted.

A dry run computes and reports what it would store, send and archive (the same counts,
corrections and recipients as the real run), and writes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.status import RunStatus
from app.db import table_of, upsert
from app.mail import templates
from app.mail.smtp import Mailer
from app.models import CronMonthlyReport
from app.voyagesmart.subscription_facts import (
    PAID_TIERS,
    between,
    grants_now,
    monthly_prices,
    movements_since,
    paid_at,
    paid_now,
    ratio,
)

reports = table_of(CronMonthlyReport)

_COUNTS = ("active", "new", "canceled")


def month_label(day: dt.date) -> str:
    return f"{day:%Y-%m}"


def month_start(label: str) -> dt.date:
    return dt.datetime.strptime(label, "%Y-%m").date()


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def previous_month(now: dt.datetime) -> dt.date:
    return _add_months(now.astimezone(dt.UTC).date().replace(day=1), -1)


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def month_figures(conn: Connection, first: dt.date, now: dt.datetime,
                  prices: dict[str, tuple[Decimal, str]] | None = None) -> dict[str, Any]:
    """Per-tier counts and MRR of the month starting `first`, and its totals."""
    if prices is None:
        prices, _ = monthly_prices(conn)
    return _months(conn, [first], prices, now)[0]


def _months(conn: Connection, firsts: list[dt.date],
            prices: dict[str, tuple[Decimal, str]], now: dt.datetime) -> list[dict[str, Any]]:
    """The figures of each month starting in `firsts`, from one read of today's paid
    subscriptions and one pass over the history for every month boundary."""
    bounds = sorted({_at(d) for f in firsts for d in (f, _add_months(f, 1))})
    now_counts = paid_now(conn, now)
    since = dict(zip(bounds, movements_since(conn, bounds, now), strict=True))

    out = []
    for first in firsts:
        start, end = _at(first), _at(_add_months(first, 1))
        at_end, at_start = paid_at(now_counts, since[end]), paid_at(now_counts, since[start])
        new, ended = (between("start", since[start], since[end]),
                      between("end", since[start], since[end]))
        tiers: dict[str, dict[str, Any]] = {}
        mrr: dict[str, Decimal] = {}
        for tier in PAID_TIERS:
            counts = {"active": at_end[tier], "new": new[tier], "canceled": ended[tier]}
            price, currency = prices[tier]
            amount = price * counts["active"]
            mrr[currency] = mrr.get(currency, Decimal(0)) + amount
            tiers[tier] = {**counts, "mrr": f"{amount:.2f}", "currency": currency,
                           "price": f"{price:.2f}"}
        totals: dict[str, Any] = {name: sum(t[name] for t in tiers.values())
                                  for name in _COUNTS}
        totals["net_change"] = totals["new"] - totals["canceled"]
        totals["live_at_start"] = sum(at_start.values())
        totals["churn_rate"] = ratio(totals["canceled"], totals["live_at_start"])
        totals["mrr"] = {cur: f"{amount:.2f}" for cur, amount in sorted(mrr.items())}
        out.append({"month": month_label(first), "tiers": tiers, "totals": totals})
    return out


def build_report(conn: Connection, first: dt.date, now: dt.datetime) -> dict[str, Any]:
    prices, warnings = monthly_prices(conn)
    current, previous = _months(conn, [first, _add_months(first, -1)], prices, now)
    change: dict[str, Any] = {
        name: current["totals"][name] - previous["totals"][name]
        for name in (*_COUNTS, "net_change")
    }
    change["mrr"] = {
        cur: f"{Decimal(current['totals']['mrr'].get(cur, '0')) - Decimal(prev):.2f}"
        for cur, prev in {**{c: "0" for c in current["totals"]["mrr"]},
                          **previous["totals"]["mrr"]}.items()
    }
    grants = grants_now(conn)
    return {**current, "previous": previous, "change": change,
            "grants": {"by_source": grants,
                       "total": sum(sum(t.values()) for t in grants.values())},
            "warnings": warnings, "corrections": []}


def _figures(data: Any) -> dict[tuple[str, str], Any]:
    """The figures of a month's report, flat: (tier or "all", figure) -> value.  A stored
    report of another shape gives what it has."""
    if not isinstance(data, dict):
        return {}
    out: dict[tuple[str, str], Any] = {}
    tiers = data.get("tiers")
    for tier, figures in (tiers.items() if isinstance(tiers, dict) else ()):
        if isinstance(figures, dict):
            out.update({(tier, n): figures[n] for n in (*_COUNTS, "mrr") if n in figures})
    totals = data.get("totals")
    if isinstance(totals, dict):
        out.update({("all", n): totals[n] for n in (*_COUNTS, "net_change", "churn_rate")
                    if n in totals})
        mrr = totals.get("mrr")
        for currency, amount in (mrr.items() if isinstance(mrr, dict) else ()):
            out[("all", f"mrr_{currency}")] = amount
    return out


def corrections(month: str, reported: Any, now: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure of `month` that differs from the report already stored for it: history
    recorded late (a cancellation Stripe made while the webhook was lost, found by the
    sync) changes a past month, and the next report says so rather than contradict the
    email already sent in silence."""
    before, after = _figures(reported), _figures(now)
    return [{"month": month, "tier": tier, "figure": name, "reported": before[(tier, name)],
             "corrected": value}
            for (tier, name), value in after.items()
            if (tier, name) in before and before[(tier, name)] != value]


def _correction_lines(found: list[dict[str, Any]]) -> list[str]:
    """`2026-11 canceled (premium): reported 0, now 1`, one per corrected figure."""
    return [f"{c['month']} {c['figure']} ({c['tier']}): reported {c['reported']}, "
            f"now {c['corrected']}" for c in found]


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["month", "tier", "metric", "value", "previous_month_value"])
    previous = report["previous"]
    for tier, figures in report["tiers"].items():
        for name in (*_COUNTS, "mrr"):
            writer.writerow([report["month"], tier, name, figures[name],
                             previous["tiers"][tier][name]])
    totals, before = report["totals"], previous["totals"]
    for name in (*_COUNTS, "net_change", "churn_rate"):
        writer.writerow([report["month"], "all", name, totals[name], before[name]])
    for currency, amount in totals["mrr"].items():
        writer.writerow([report["month"], "all", f"mrr_{currency}", amount,
                         before["mrr"].get(currency, "0.00")])
    return out.getvalue()


def _message(settings: Settings, report: dict[str, Any], csv_text: str) -> Any:
    context = {"report": report, "tiers": list(report["tiers"].items())}
    text = templates.template("subscription_report.txt").render(context)
    html = templates.template("subscription_report.html").render(context)
    mrr = ", ".join(f"{a} {c}" for c, a in report["totals"]["mrr"].items())
    corrected = sorted({c["month"] for c in report["corrections"]})
    message = Mailer(settings).build(
        settings.admin_emails,
        f"VoyageSmart subscriptions {report['month']}: {report['totals']['active']} active, "
        f"MRR {mrr}" + (f" (corrects {', '.join(corrected)})" if corrected else ""),
        text, html)
    message.add_attachment(csv_text.encode(), maintype="text", subtype="csv",
                           filename=f"subscription-report-{report['month']}.csv")
    return message


def _store(conn: Connection, values: dict[str, Any]) -> None:
    stmt = upsert(conn.dialect, reports).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[reports.c.month],
        set_={k: stmt.excluded[k] for k in ("data", "csv", "updated_at", "run_id")},
    ))


def run(ctx: JobContext) -> JobResult:
    settings = ctx.settings
    first = previous_month(ctx.as_of)  # the month before its slot: a backfill gets its own
    label = month_label(first)
    cutoff = _add_months(ctx.now.astimezone(dt.UTC).date().replace(day=1),
                         -settings.report_retention_months)
    previous_label = month_label(_add_months(first, -1))
    with ctx.engine.connect() as conn:
        report = build_report(conn, first, ctx.now)
        # The reports already stored for this month and the one before (what was sent).
        stored = {row.month: row for row in conn.execute(
            sa.select(reports.c.month, reports.c.data, reports.c.sent_at)
            .where(reports.c.month.in_([label, previous_label])))}
        to_archive = int(conn.scalar(
            sa.select(sa.func.count()).select_from(reports)
            .where(reports.c.archived.is_(False), reports.c.month_start < cutoff)) or 0)
    # A month already reported is never rewritten in silence: the report says what changed.
    report["corrections"] = [
        *(corrections(previous_label, stored[previous_label].data, report["previous"])
          if previous_label in stored else []),
        *(corrections(label, stored[label].data, report) if label in stored else []),
    ]
    already_sent = label in stored and stored[label].sent_at is not None
    send = bool(settings.admin_emails) and (not already_sent or ctx.force)
    csv_text = report_csv(report)
    details: dict[str, Any] = {"month": label, "report": report, "archived": to_archive,
                               "already_sent": already_sent,
                               "sent_to": settings.admin_emails if send else []}
    totals = report["totals"]
    summary = (f"{label}: {totals['active']} active, MRR "
               + (", ".join(f"{a} {c}" for c, a in totals["mrr"].items()) or "0")
               + f", {totals['new']} new, {totals['canceled']} canceled; "
               f"{report['grants']['total']} granted tiers (not in MRR)")
    if report["corrections"]:  # the totals here; every figure in the email
        summary += "; corrects " + "; ".join(_correction_lines(
            [c for c in report["corrections"] if c["tier"] == "all"]))

    if ctx.dry_run:
        action = (f"would send to {len(settings.admin_emails)} admin(s)" if send
                  else "would not send")
        return JobResult(int(send) + to_archive,
                         f"{summary}; {action}; would archive {to_archive}",
                         status=RunStatus.WARNING if not send and not already_sent
                         else RunStatus.SUCCESS,
                         details=details)

    if not already_sent or ctx.force:
        with ctx.engine.begin() as conn:
            _store(conn, {"month": label, "month_start": first, "data": report,
                          "csv": csv_text, "created_at": ctx.now, "updated_at": ctx.now,
                          "run_id": ctx.run_id, "archived": False})
    if send:
        # At least once: a crash between the send and the mark sends it again next run.
        Mailer(settings).send(_message(settings, report, csv_text))
        with ctx.engine.begin() as conn:
            conn.execute(reports.update().where(reports.c.month == label).values(
                sent_at=ctx.now, sent_to=", ".join(settings.admin_emails)))
    with ctx.engine.begin() as conn:
        archived = conn.execute(
            reports.update()
            .where(reports.c.archived.is_(False), reports.c.month_start < cutoff)
            .values(archived=True, archived_at=ctx.now)
        ).rowcount
    details["archived"] = archived
    details["sent_to"] = settings.admin_emails if send else []
    if send:
        outcome = f"sent to {len(settings.admin_emails)} admin(s)"
    elif already_sent:
        outcome = "already sent, not sent again"
    else:
        outcome = "stored, not sent: ADMIN_EMAILS is empty"
    return JobResult(records_processed=int(send) + archived,
                     message=f"{summary}; {outcome}; archived {archived}",
                     status=RunStatus.WARNING if not send and not already_sent
                     else RunStatus.SUCCESS,
                     details=details)


def read_report(conn: Connection, label: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(reports).where(reports.c.month == label)).mappings().first()
    return dict(row) if row else None
