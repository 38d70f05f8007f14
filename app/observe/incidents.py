"""Alerts per incident, not per run: when to speak, and what the message looks like.

Every failed run used to send its own alert, so a job failing on each of 30 scheduler
retries sent 30 emails, while an overdue or stuck job, which has no failed run, sent none.
healthchecks.io and Sentry Crons alert on a change of state instead, and so does `step`:

1. healthy -> failing, overdue or stuck: one alert (`opened`);
2. still unhealthy: nothing, apart from one `reminder` once `remind_after` has passed since
   the alert (None: never remind);
3. unhealthy -> healthy: one `recovered` alert, saying since when the job was down;
4. a change of kind while unhealthy (failing -> stuck, failing -> overdue): the incident
   goes on, silently.  The state takes the new kind, so the reminder and the recovery name
   it.  A failing job also becomes overdue as time passes, and the two can alternate with
   every retry; an alert on each change would be exactly the noise this module stops.

The state is a small value the caller stores per job.  `step` returns the same object when
nothing changes, so nothing is written; when it changes, the caller claims the transition
with a conditional update on the previous value (the database decides which instance
sends, so each alert goes out once across instances).  `render` turns an alert into a
webhook body: the documented JSON (`body`), or the ready Slack or Discord form.  Pure: `now`
is passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

SERVICE = "voyagesmart-cron"
FORMATS = ("json", "slack", "discord")
_DETAIL_LIMIT = 500  # a run's message, not its traceback: kept short in every channel


class Condition(StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"
    OVERDUE = "overdue"
    STUCK = "stuck"


class AlertKind(StrEnum):
    OPENED = "opened"
    REMINDER = "reminder"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class IncidentState:
    condition: Condition = Condition.HEALTHY
    since: dt.datetime | None = None  # when the job entered this state (incident start)
    alerted_at: dt.datetime | None = None  # the last alert sent for this job
    reminded: bool = False  # the one reminder of this incident went out
    run_id: str | None = None  # the latest run the incident saw

    def as_dict(self) -> dict[str, Any]:
        return {"condition": str(self.condition), "since": _iso(self.since),
                "alerted_at": _iso(self.alerted_at), "reminded": self.reminded,
                "run_id": self.run_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IncidentState:
        def when(key: str) -> dt.datetime | None:
            value = data.get(key)
            return dt.datetime.fromisoformat(value) if value else None

        return cls(Condition(data.get("condition", Condition.HEALTHY)), when("since"),
                   when("alerted_at"), bool(data.get("reminded", False)), data.get("run_id"))


@dataclass(frozen=True)
class Observation:
    """What the health rules see for one job at `now`."""

    condition: Condition
    detail: str = ""  # what the run or the rule said: "SMTP 421 after 3 attempts"
    run_id: str | uuid.UUID | None = None
    since: dt.datetime | None = None  # when this began (failed run's start, due-by); else now


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    job: str
    condition: Condition  # the state now; `healthy` for a recovery
    was: Condition  # the state before; for a recovery, the kind of incident that ended
    since: dt.datetime  # when the incident began
    at: dt.datetime  # when this alert was decided
    run_id: str | None
    detail: str

    @property
    def summary(self) -> str:
        since = f"since {_stamp(self.since)}"
        detail = f": {self.detail}" if self.detail else ""
        if self.kind is AlertKind.OPENED:
            return f"{self.job} is {self.condition} {since}{detail}"
        if self.kind is AlertKind.REMINDER:
            return (f"Reminder: {self.job} is still {self.condition}, {since} "
                    f"({_span(self.at - self.since)}){detail}")
        return f"{self.job} recovered after {_span(self.at - self.since)} {self.was} ({since})"


def step(job: str, state: IncidentState, seen: Observation, now: dt.datetime, *,
         remind_after: dt.timedelta | None = None) -> tuple[IncidentState, Alert | None]:
    """The new state of `job`'s incident and the one alert to send, if any."""
    run_id = str(seen.run_id) if seen.run_id is not None else None
    detail = _short(seen.detail)
    healthy_now = seen.condition is Condition.HEALTHY
    if state.condition is Condition.HEALTHY:
        if healthy_now:
            return state, None
        since = seen.since or now
        alert = Alert(AlertKind.OPENED, job, seen.condition, state.condition, since, now,
                      run_id, detail)
        return IncidentState(seen.condition, since, now, False, run_id), alert
    since = state.since or now
    if healthy_now:
        alert = Alert(AlertKind.RECOVERED, job, Condition.HEALTHY, state.condition, since,
                      now, run_id or state.run_id, detail)
        return IncidentState(Condition.HEALTHY, seen.since or now, now, False, run_id), alert
    current = dataclasses.replace(state, condition=seen.condition,
                                  run_id=run_id or state.run_id)
    last_alert = state.alerted_at or since
    if not state.reminded and remind_after is not None and now - last_alert >= remind_after:
        alert = Alert(AlertKind.REMINDER, job, seen.condition, state.condition, since, now,
                      current.run_id, detail)
        return dataclasses.replace(current, alerted_at=now, reminded=True), alert
    return (state, None) if current == state else (current, None)


def dashboard_url(base_url: str | None, job: str, run_id: str | None) -> str | None:
    """The job's page on the dashboard, at the run's row when there is one."""
    if not base_url:
        return None
    url = f"{base_url.rstrip('/')}/dashboard/jobs/{urllib.parse.quote(job, safe='')}"
    return f"{url}#run-{run_id}" if run_id else url


def body(alert: Alert, base_url: str | None = None) -> dict[str, Any]:
    """The documented webhook JSON: every field is always present.

    {"event": "incident_opened" | "incident_reminder" | "incident_recovered",
     "service": "voyagesmart-cron", "task": <job>,
     "status": "failing" | "overdue" | "stuck" | "healthy"  (now),
     "previous_status": <the state before; the incident's kind for a recovery>,
     "since": <ISO 8601 UTC, start of the incident>, "at": <ISO 8601 UTC>,
     "down_seconds": <whole seconds from since to at>,
     "run_id": <uuid or null>, "detail": <the run's or the rule's message, ≤ 500 chars>,
     "summary": <one sentence>, "url": <dashboard link, or null without a base URL>}
    """
    return {
        "event": f"incident_{alert.kind}",
        "service": SERVICE,
        "task": alert.job,
        "status": str(alert.condition),
        "previous_status": str(alert.was),
        "since": _iso(alert.since),
        "at": _iso(alert.at),
        "down_seconds": int((alert.at - alert.since).total_seconds()),
        "run_id": alert.run_id,
        "detail": alert.detail,
        "summary": alert.summary,
        "url": dashboard_url(base_url, alert.job, alert.run_id),
    }


def slack(alert: Alert, base_url: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (the notification) and the same in blocks."""
    url = dashboard_url(base_url, alert.job, alert.run_id)
    text = _slack_escape(alert.summary)
    context = f"{SERVICE} · {alert.kind}" + (f" · run `{alert.run_id}`" if alert.run_id else "")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]
    if url:
        blocks[0]["text"]["text"] += f"\n<{url}|Open on the dashboard>"
        text += f" <{url}>"
    return {"text": text, "blocks": blocks}


def discord(alert: Alert, base_url: str | None = None) -> dict[str, Any]:
    """A Discord incoming-webhook body; a detail reading "@everyone" pings no one."""
    url = dashboard_url(base_url, alert.job, alert.run_id)
    content = alert.summary + (f"\n<{url}>" if url else "")
    return {"content": content[:2000], "allowed_mentions": {"parse": []}}


def render(alert: Alert, fmt: str, base_url: str | None = None) -> dict[str, Any]:
    """The webhook body in `fmt`: one of FORMATS."""
    renderers = {"json": body, "slack": slack, "discord": discord}
    if fmt not in renderers:
        raise ValueError(f"unknown webhook format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return renderers[fmt](alert, base_url)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _span(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{seconds} s"
