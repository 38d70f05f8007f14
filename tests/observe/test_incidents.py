"""Alerts per incident, not per run: every transition of the state machine, and the bodies."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from app.observe.incidents import (
    FORMATS,
    Alert,
    AlertKind,
    Condition,
    IncidentState,
    Observation,
    body,
    discord,
    render,
    slack,
    step,
)

T0 = dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
HEALTHY = IncidentState()
RUN = "6f1c2a9e-3b7d-4c1e-9a51-0d2b8e4f7a10"


def _fail(run: str = RUN, detail: str = "SMTP 421 after 3 attempts") -> Observation:
    return Observation(Condition.FAILING, detail, run, None)


def _ok(run: str = "b7e0c5d2-1111-4c1e-9a51-0d2b8e4f7a10") -> Observation:
    return Observation(Condition.HEALTHY, "", run)


def _replay(observations: list[tuple[dt.datetime, Observation]],
            remind_after: dt.timedelta | None = None,
            state: IncidentState = HEALTHY) -> tuple[IncidentState, list[Alert]]:
    alerts = []
    for now, seen in observations:
        state, alert = step("trip-reminders", state, seen, now, remind_after=remind_after)
        if alert is not None:
            alerts.append(alert)
    return state, alerts


def test_healthy_and_staying_healthy_sends_nothing_and_changes_nothing() -> None:
    state, alert = step("trip-reminders", HEALTHY, _ok(), T0)
    assert alert is None and state is HEALTHY


@pytest.mark.parametrize("condition", [Condition.FAILING, Condition.OVERDUE, Condition.STUCK])
def test_going_unhealthy_sends_one_alert(condition: Condition) -> None:
    started = T0 - 5 * MIN
    state, alert = step("trip-reminders", HEALTHY,
                        Observation(condition, "what the rule said", RUN, started), T0)
    assert alert == Alert(AlertKind.OPENED, "trip-reminders", condition, Condition.HEALTHY,
                          started, T0, RUN, "what the rule said")
    assert state == IncidentState(condition, started, T0, False, RUN)
    assert alert.summary == (f"trip-reminders is {condition} since 2026-04-02 07:55 UTC: "
                             "what the rule said")


def test_staying_unhealthy_sends_nothing() -> None:
    opened, _ = step("trip-reminders", HEALTHY, _fail(), T0)
    same, alert = step("trip-reminders", opened, _fail(), T0 + 10 * MIN)
    assert alert is None and same is opened  # nothing to write
    newer, alert = step("trip-reminders", opened, _fail(run="another-run"), T0 + 20 * MIN)
    assert alert is None
    assert newer == IncidentState(Condition.FAILING, T0, T0, False, "another-run")


def test_three_failures_then_a_success_alert_once_and_recover_once() -> None:
    state, alerts = _replay([
        (T0, _fail("run-1")),
        (T0 + 10 * MIN, _fail("run-2")),
        (T0 + 20 * MIN, _fail("run-3")),
        (T0 + 30 * MIN, _ok("run-4")),
    ], remind_after=dt.timedelta(hours=1))
    assert [a.kind for a in alerts] == [AlertKind.OPENED, AlertKind.RECOVERED]
    opened, recovered = alerts
    assert opened.run_id == "run-1" and recovered.run_id == "run-4"
    assert recovered.was is Condition.FAILING and recovered.condition is Condition.HEALTHY
    assert recovered.since == T0
    assert recovered.summary == ("trip-reminders recovered after 30 min failing "
                                 "(since 2026-04-02 08:00 UTC)")
    assert state.condition is Condition.HEALTHY and state.alerted_at == T0 + 30 * MIN


def test_one_reminder_after_the_interval_and_no_more() -> None:
    remind = dt.timedelta(hours=4)
    every_quarter_hour = [(T0 + i * 15 * MIN, _fail(f"run-{i}")) for i in range(4 * 24)]
    state, alerts = _replay(every_quarter_hour, remind_after=remind)
    assert [(a.kind, a.at) for a in alerts] == [(AlertKind.OPENED, T0),
                                                (AlertKind.REMINDER, T0 + remind)]
    assert alerts[1].summary == ("Reminder: trip-reminders is still failing, since "
                                 "2026-04-02 08:00 UTC (4 h 0 min): SMTP 421 after 3 attempts")
    assert alerts[1].run_id == "run-16"
    assert state.reminded and state.alerted_at == T0 + remind and state.since == T0


def test_without_a_reminder_interval_there_is_never_a_reminder() -> None:
    week = [(T0 + i * dt.timedelta(hours=1), _fail()) for i in range(24 * 7)]
    _, alerts = _replay(week, remind_after=None)
    assert [a.kind for a in alerts] == [AlertKind.OPENED]


def test_a_job_overdue_with_no_run_at_all_is_alerted_once() -> None:
    due_by = T0 - 2 * MIN
    overdue = Observation(Condition.OVERDUE,
                          "no successful run since never; was due by 2026-04-02T07:58:00Z",
                          None, due_by)
    # Every cron call and /health request re-checks: once a minute for a day.
    _, alerts = _replay([(T0 + i * MIN, overdue) for i in range(24 * 60)])
    [alert] = alerts
    assert alert.kind is AlertKind.OPENED and alert.condition is Condition.OVERDUE
    assert alert.run_id is None and alert.since == due_by
    assert body(alert, "https://cron.example.com")["url"] == (
        "https://cron.example.com/dashboard/jobs/trip-reminders")


def test_a_change_of_kind_while_unhealthy_continues_the_incident_silently() -> None:
    remind = dt.timedelta(hours=2)
    state, alerts = _replay([
        (T0, _fail("run-1")),
        (T0 + 30 * MIN, Observation(Condition.STUCK, "running since 08:31", "run-2")),
        (T0 + 60 * MIN, Observation(Condition.OVERDUE, "was due by 09:00", None)),
        (T0 + 90 * MIN, Observation(Condition.STUCK, "running since 08:31", "run-2")),
    ], remind_after=remind)
    assert [a.kind for a in alerts] == [AlertKind.OPENED]
    assert state == IncidentState(Condition.STUCK, T0, T0, False, "run-2")
    # The reminder and the recovery name the kind the incident has now.
    state, reminder = step("trip-reminders", state,
                           Observation(Condition.STUCK, "running since 08:31", "run-2"),
                           T0 + remind, remind_after=remind)
    assert reminder is not None and reminder.kind is AlertKind.REMINDER
    assert reminder.condition is Condition.STUCK and reminder.since == T0
    _, recovered = step("trip-reminders", state, _ok("run-3"), T0 + 3 * remind)
    assert recovered is not None and recovered.was is Condition.STUCK
    assert recovered.summary.startswith("trip-reminders recovered after 6 h 0 min stuck")


def test_after_recovery_a_new_failure_is_a_new_incident() -> None:
    remind = dt.timedelta(hours=1)
    _, alerts = _replay([
        (T0, _fail("run-1")),
        (T0 + 2 * remind, _fail("run-2")),  # reminder
        (T0 + 3 * remind, _ok("run-3")),
        (T0 + 4 * remind, _fail("run-4")),
        (T0 + 5 * remind + MIN, _fail("run-5")),  # this incident's own reminder
    ], remind_after=remind)
    assert [(a.kind, a.run_id) for a in alerts] == [
        (AlertKind.OPENED, "run-1"), (AlertKind.REMINDER, "run-2"),
        (AlertKind.RECOVERED, "run-3"), (AlertKind.OPENED, "run-4"),
        (AlertKind.REMINDER, "run-5")]
    assert alerts[3].since == T0 + 4 * remind


def test_racing_instances_compute_the_same_transition() -> None:
    # Two instances read the same previous state: identical results, so a conditional
    # update on the previous value lets exactly one of them send.
    first = step("trip-reminders", HEALTHY, _fail(), T0)
    second = step("trip-reminders", HEALTHY, _fail(), T0)
    assert first == second and first[1] is not None


def test_the_state_round_trips_through_json() -> None:
    state, _ = _replay([(T0, _fail()), (T0 + dt.timedelta(hours=5), _fail())],
                       remind_after=dt.timedelta(hours=4))
    stored = json.loads(json.dumps(state.as_dict()))
    assert stored == {"condition": "failing", "since": "2026-04-02T08:00:00Z",
                      "alerted_at": "2026-04-02T13:00:00Z", "reminded": True, "run_id": RUN}
    assert IncidentState.from_dict(stored) == state
    assert IncidentState.from_dict({}) == HEALTHY


def test_a_uuid_run_id_and_a_long_traceback_like_detail() -> None:
    run = uuid.uuid4()
    detail = "Traceback (most recent call last):\n" + "  line\n" * 200
    _, alert = step("trip-reminders", HEALTHY, Observation(Condition.FAILING, detail, run), T0)
    assert alert is not None and alert.run_id == str(run)
    assert len(alert.detail) == 500 and alert.detail.endswith("…")
    assert "\n" not in alert.detail


@pytest.fixture
def opened() -> Alert:
    _, alert = step("trip-reminders", HEALTHY,
                    Observation(Condition.FAILING, "SMTP <421> & retry", RUN, T0 - 3 * MIN),
                    T0)
    assert alert is not None
    return alert


def test_the_documented_json_body(opened: Alert) -> None:
    assert body(opened, "https://cron.example.com/") == {
        "event": "incident_opened",
        "service": "voyagesmart-cron",
        "task": "trip-reminders",
        "status": "failing",
        "previous_status": "healthy",
        "since": "2026-04-02T07:57:00Z",
        "at": "2026-04-02T08:00:00Z",
        "down_seconds": 180,
        "run_id": RUN,
        "detail": "SMTP <421> & retry",
        "summary": "trip-reminders is failing since 2026-04-02 07:57 UTC: SMTP <421> & retry",
        "url": f"https://cron.example.com/dashboard/jobs/trip-reminders#run-{RUN}",
    }
    assert body(opened)["url"] is None


def test_the_slack_form(opened: Alert) -> None:
    message = slack(opened, "https://cron.example.com")
    url = f"https://cron.example.com/dashboard/jobs/trip-reminders#run-{RUN}"
    assert message["text"] == ("trip-reminders is failing since 2026-04-02 07:57 UTC: "
                               f"SMTP &lt;421&gt; &amp; retry <{url}>")
    section, context = message["blocks"]
    assert section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"].endswith(f"\n<{url}|Open on the dashboard>")
    assert context["elements"][0]["text"] == f"voyagesmart-cron · opened · run `{RUN}`"
    assert "<http" not in slack(opened)["text"]


def test_the_discord_form(opened: Alert) -> None:
    message = discord(opened, "https://cron.example.com")
    assert message == {
        "content": "trip-reminders is failing since 2026-04-02 07:57 UTC: SMTP <421> & retry\n"
                   f"<https://cron.example.com/dashboard/jobs/trip-reminders#run-{RUN}>",
        "allowed_mentions": {"parse": []},
    }
    _, loud = step("x" * 3000, HEALTHY, _fail(detail="@everyone"), T0)
    assert loud is not None and len(discord(loud)["content"]) == 2000


def test_render_chooses_the_form_by_name(opened: Alert) -> None:
    assert FORMATS == ("json", "slack", "discord")
    assert render(opened, "json") == body(opened)
    assert render(opened, "slack", "https://c.example") == slack(opened, "https://c.example")
    assert render(opened, "discord") == discord(opened)
    with pytest.raises(ValueError, match="unknown webhook format 'teams': choose one of json, "
                                         "slack, discord"):
        render(opened, "teams")
