"""Alerts per incident: an email to the admins and a POST to `WEBHOOK_URL`, once per change.

`check` runs after every run (every cron call, CLI run) and on every `/health` request:

1. One read of every job's stored incident state (`cron_job_incident`), BEFORE the run
   log is read: a state written by another instance was decided on facts that were
   committed before it, so facts read after it are at least as new.  (Read the other way
   round, an instance holding facts from before a recovery would reopen the incident.)
2. Each job's health (app/core/health.py, computed by /health or read here in four
   grouped reads) becomes an observation: stuck, failing, overdue or healthy.
3. The state machine (app/observe/incidents.py) says whether the job's state changes and
   which alert, if any, is due: opened, the one reminder, recovered.
4. A change is claimed by a conditional UPDATE on the version read (an INSERT that does
   nothing on conflict for a job without a row): of two instances seeing the same change,
   the database lets one write, and only that one sends.  The loser leaves it there: the
   winner saw facts at least as new, and the next check sees newer ones.
5. The winner sends the alert on both channels side by side and records what each did.

Each channel reports `sent` only once its server accepted the alert, `skipped` when it is
not configured, `failed: <error>` otherwise, naming the library's exception (httpx's,
smtplib's).  An alert that cannot be sent is logged and swallowed here (it is not retried: a
claimed alert goes out at most once): it must never hide or change a job's own status, so
no channel's error, nor a database error of the check itself, ever reaches the caller.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import health
from app.core.budget import Budget
from app.core.health import JobHealth
from app.core.registry import JobSpec
from app.db import table_of, upsert
from app.mail.smtp import Mailer
from app.models import CronJobIncident
from app.observe import incidents
from app.observe.incidents import Alert, AlertKind, Condition, IncidentState, Observation

log = logging.getLogger("app.observe.alerts")

incident_t = table_of(CronJobIncident)
_SUBJECTS = {
    AlertKind.OPENED: "{job} is {condition}",
    AlertKind.REMINDER: "Reminder: {job} is still {condition}",
    AlertKind.RECOVERED: "{job} recovered",
}


@dataclass(frozen=True)
class Stored:
    state: IncidentState
    version: int | None  # None: the job has no row yet


# --- what the health rules see -------------------------------------------------------------
def observe(spec: JobSpec, item: JobHealth) -> Observation:
    """A job's health as the state machine sees it; stuck before failing before overdue
    (the most immediate trouble names the incident)."""
    facts = item.facts
    if item.stuck and facts.running_since is not None:
        return Observation(Condition.STUCK,
                           f"running since {_fmt(facts.running_since)}, past its max runtime "
                           f"of {_fmt_span(spec.max_runtime)}",
                           None, facts.running_since + spec.max_runtime)
    if item.failing:
        return Observation(Condition.FAILING,
                           facts.last_outcome_message or f"latest run {facts.last_outcome}",
                           facts.last_outcome_run_id, facts.last_outcome_at)
    if item.overdue:
        return Observation(Condition.OVERDUE,
                           f"no successful run since {_fmt(facts.last_success)}; was due by "
                           f"{_fmt(item.due_by)}", None, item.due_by)
    return Observation(Condition.HEALTHY, "", facts.last_outcome_run_id)


# --- the check ---------------------------------------------------------------------------
def snapshot(engine: Engine, jobs: dict[str, JobSpec]) -> dict[str, Stored] | None:
    """Every job's incident state, for a caller that reads the run log itself (/health):
    read it first (step 1).  None when it cannot be read (no check then)."""
    try:
        return _load(engine, list(jobs))
    except sa_exc.SQLAlchemyError as exc:
        log.warning("incident state unreadable: %s", type(exc).__name__)
        return None


def check(settings: Settings, engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime,
          results: Iterable[JobHealth] | None = None,
          stored: dict[str, Stored] | None = None) -> dict[str, dict[str, str]]:
    """Alert every change of incident state at `now`, once across instances.

    `results`: the health the caller computed from the run log it read after `stored`
    (`snapshot`); without them both are read here, in that order.  Returns, per job
    alerted, the event and what each channel did.  Never raises.
    """
    if not settings.enable_cron_jobs:
        return {}  # paused on purpose: every job would turn overdue
    try:
        if results is None:
            stored = _load(engine, list(jobs))
            facts, baseline = health.read_facts(engine, jobs)
            results, _ = health.evaluate(jobs, facts, now, baseline)
        elif stored is None:
            return {}  # the state could not be read before the facts
        seen = {item.name: observe(jobs[item.name], item) for item in results}
        due = _claim_changes(engine, stored, seen, now, _remind_after(settings))
    except sa_exc.SQLAlchemyError as exc:
        log.warning("incident check failed: %s", type(exc).__name__)
        return {}
    sent = {}
    for alert in due:
        channels = send(settings, alert)
        sent[alert.job] = {"event": f"incident_{alert.kind}", **channels}
        _record(engine, alert, channels)
    return sent


def _remind_after(settings: Settings) -> dt.timedelta | None:
    hours = settings.alert_reminder_hours
    return dt.timedelta(hours=hours) if hours > 0 else None


def _claim_changes(engine: Engine, stored: dict[str, Stored], seen: dict[str, Observation],
                   now: dt.datetime, remind_after: dt.timedelta | None) -> list[Alert]:
    alerts = []
    for job, observation in seen.items():
        current = stored.get(job, Stored(IncidentState(), None))
        state, alert = incidents.step(job, current.state, observation, now,
                                      remind_after=remind_after)
        if state is current.state:
            continue  # nothing changed: nothing to write, nothing to send
        if _claim(engine, job, current.version, state) and alert is not None:
            alerts.append(alert)
    return alerts


def _load(engine: Engine, jobs: list[str]) -> dict[str, Stored]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(incident_t).where(incident_t.c.task.in_(jobs))).all()
    return {row.task: Stored(IncidentState(Condition(row.condition), row.since,
                                           row.alerted_at, row.reminded, row.run_id),
                             row.version)
            for row in rows}


def _claim(engine: Engine, job: str, version: int | None, state: IncidentState) -> bool:
    """Write `state` if the job's row is still at `version`; True when this call wrote it."""
    values = {"condition": str(state.condition), "since": state.since,
              "alerted_at": state.alerted_at, "reminded": state.reminded,
              "run_id": state.run_id}
    with engine.begin() as conn:
        if version is None:
            statement = (upsert(conn.dialect, incident_t)
                         .values(task=job, version=1, **values).on_conflict_do_nothing())
        else:
            statement = (incident_t.update()
                         .where(incident_t.c.task == job, incident_t.c.version == version)
                         .values(version=version + 1, **values))
        # RETURNING, not the row count: what the driver reports for an INSERT that did
        # nothing on conflict differs between drivers.
        return conn.execute(statement.returning(incident_t.c.task)).first() is not None


def _record(engine: Engine, alert: Alert, channels: dict[str, str]) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(incident_t.update().where(incident_t.c.task == alert.job).values(
                last_alert={"event": f"incident_{alert.kind}", "at": incidents.body(alert)["at"],
                            "channels": channels}))
    except sa_exc.SQLAlchemyError as exc:
        log.warning("could not record the alert about %s: %s", alert.job, type(exc).__name__)


# --- the channels ------------------------------------------------------------------------
def _base_url(settings: Settings) -> str | None:
    return settings.service_base_url


def _email(settings: Settings, alert: Alert) -> bool:
    if not settings.admin_emails:
        return False
    mailer = Mailer(settings)
    fields = incidents.body(alert, _base_url(settings))
    lines = [f"{key}: {value}" for key, value in fields.items() if value is not None]
    link = f"\n\nOn the dashboard: {fields['url']}" if fields["url"] else ""
    text = f"{alert.summary}.\n\n" + "\n".join(lines) + link + "\n"
    subject = _SUBJECTS[alert.kind].format(job=alert.job, condition=alert.condition)
    mailer.send(mailer.build(settings.admin_emails, f"[voyagesmart-cron] {subject}", text))
    return True


def _webhook(settings: Settings, alert: Alert) -> bool:
    if not settings.webhook_url:
        return False
    response = httpx.post(
        settings.webhook_url,
        json=incidents.render(alert, settings.webhook_format, _base_url(settings)),
        timeout=Budget.current().timeout(settings.webhook_timeout),
    )
    response.raise_for_status()
    return True


def _send(name: str, sender: Callable[[Settings, Alert], bool], settings: Settings,
          alert: Alert) -> str:
    try:
        return "sent" if sender(settings, alert) else "skipped"
    except Exception as exc:  # an alert channel failing must not mask the job status
        log.warning("alert via %s failed: %s", name, type(exc).__name__)
        return f"failed: {type(exc).__name__}"


def send(settings: Settings, alert: Alert) -> dict[str, str]:
    """Send `alert` on every configured channel, side by side (each within the caller's
    time budget, app/core/budget.py); return what happened to each, never raise."""
    channels: tuple[tuple[str, Callable[[Settings, Alert], bool]], ...] = (
        ("email", _email), ("webhook", _webhook))
    with ThreadPoolExecutor(len(channels), thread_name_prefix="alert") as pool:
        # Each thread runs in a copy of this context, so it sees the budget.
        futures = {name: pool.submit(contextvars.copy_context().run, _send, name, sender,
                                     settings, alert)
                   for name, sender in channels}
        return {name: future.result() for name, future in futures.items()}


def _fmt(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "never"


def _fmt_span(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 60} min" if seconds % 60 == 0 and seconds >= 60 else f"{seconds} s"
