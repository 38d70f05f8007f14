"""Sentry: error events tagged with the run, and Sentry Crons check-ins for every run.

With `SENTRY_DSN` set, errors (including the runner's "run failed" log line, through the
SDK's logging integration) reach Sentry tagged with `task` and `run_id`.  Every real run
sends an `in_progress` check-in and then `ok` or `error` with its duration under the same
check-in id, with a monitor config built from the registry, so Sentry creates the monitor
itself and alerts when a run is missed, late or too long.  A run that finished but is far
outside its job's recent runs (app/observe/run_marks.py) also sends one warning event with
its marks as the `anomalies` context, in the same trace as the run's check-ins: Sentry
keeps only the trace context on a check-in and shows the events of its trace beside it.

Nothing personal leaves: default PII stays off, local variables are not attached,
and `before_send` replaces every configured secret, bearer/basic credentials, the
Authorization and Cookie headers and email addresses anywhere in the event.
"""

from __future__ import annotations

import math
import threading
import uuid
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.crons import capture_checkin
from sentry_sdk.crons.consts import MonitorStatus

from app.config import Settings
from app.core.registry import JobSpec
from app.core.status import DONE, RunStatus
from app.logs import EMAIL, Redactor, secrets_of

if TYPE_CHECKING:
    from app.core.context import JobContext
    from app.core.runner import RunObserver, RunOutcome

_SENSITIVE_KEYS = frozenset({"authorization", "cookie", "set-cookie", "x-api-key",
                             "proxy-authorization"})
FILTERED = "[Filtered]"


def monitor_config(spec: JobSpec) -> dict[str, Any]:
    """Sentry's monitor for a job, from its registry entry (minutes are Sentry's unit)."""
    return {
        "schedule": {"type": "crontab", "value": spec.schedule},
        "timezone": "UTC",  # registry schedules are UTC, as Vercel requires
        "checkin_margin": max(1, math.ceil(spec.grace.total_seconds() / 60)),
        "max_runtime": max(1, math.ceil(spec.max_runtime.total_seconds() / 60)),
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
    }


class _Scrubber:
    def __init__(self, settings: Settings) -> None:
        self.redact = Redactor(secrets_of(settings))

    def _clean(self, value: Any, key: str | None = None) -> Any:
        if key is not None and key.lower() in _SENSITIVE_KEYS:
            return FILTERED
        if isinstance(value, str):
            return EMAIL.sub(FILTERED, self.redact(value, hide_emails=False))
        if isinstance(value, dict):
            return {k: self._clean(v, k if isinstance(k, str) else None)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            # Headers arrive as [name, value] pairs in some integrations.
            if (len(value) == 2 and isinstance(value[0], str)
                    and value[0].lower() in _SENSITIVE_KEYS):
                return [value[0], FILTERED]
            return [self._clean(item) for item in value]
        return value

    def __call__(self, event: Any, _hint: Any) -> Any:
        event.pop("user", None)
        return self._clean(event)


def init_sentry(settings: Settings) -> bool:
    """Start the SDK once per DSN; True when Sentry is on."""
    if not settings.sentry_dsn:
        return False
    client = sentry_sdk.get_client()
    if client.is_active() and client.dsn == settings.sentry_dsn:
        return True
    scrub = _Scrubber(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.vercel_env or settings.app_env,
        # PII stays off by default.  This SDK deprecates `send_default_pii`, and giving
        # `data_collection` instead would switch off its default EventScrubber.
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub,
        before_breadcrumb=lambda crumb, _hint: scrub._clean(crumb),
        traces_sample_rate=None,
    )
    return True


class SentryCronObserver:
    """Run observer sending one check-in pair per real (not dry) run."""

    def __init__(self) -> None:
        self._open: dict[uuid.UUID, str] = {}
        self._lock = threading.Lock()

    def run_started(self, spec: JobSpec, ctx: JobContext) -> None:
        scope = sentry_sdk.get_isolation_scope()
        scope.set_tag("task", spec.name)
        scope.set_tag("run_id", str(ctx.run_id))
        scope.set_tag("trigger", ctx.trigger)
        if ctx.dry_run:
            return
        check_in_id = capture_checkin(monitor_slug=spec.name,
                                      status=MonitorStatus.IN_PROGRESS,
                                      monitor_config=monitor_config(spec))  # type: ignore[arg-type]
        if check_in_id:
            with self._lock:
                self._open[ctx.run_id] = check_in_id

    def run_finished(self, spec: JobSpec, outcome: RunOutcome) -> None:
        with self._lock:
            check_in_id = self._open.pop(outcome.run_id, None) if outcome.run_id else None
        if outcome.anomalies:
            _report_anomalies(spec, outcome.run_id, outcome.anomalies)
        if check_in_id is not None:
            # A partial run closes this invocation's check-in as ok: it did its share, the
            # next call opens its own, and a run never finished is alerted by /health.
            ok = outcome.status in DONE or outcome.status == RunStatus.PARTIAL
            capture_checkin(monitor_slug=spec.name, check_in_id=check_in_id,
                            status=MonitorStatus.OK if ok else MonitorStatus.ERROR,
                            duration=outcome.duration_ms / 1000)
        scope = sentry_sdk.get_isolation_scope()
        for tag in ("task", "run_id", "trigger"):
            scope.remove_tag(tag)


def report_closed_by_worker(settings: Settings, spec: JobSpec, run_id: uuid.UUID,
                            status: RunStatus, duration_s: float,
                            anomalies: list[dict[str, Any]]) -> None:
    """The end of a run a queue worker closed (app/queue/chunk_job.py): its last call
    answered `partial` and closed that call's check-in as ok, so the slot's outcome reaches
    the monitor here, as one check-in of its own (ok or error), with the run's anomalies."""
    if not init_sentry(settings):
        return
    if anomalies:
        _report_anomalies(spec, run_id, anomalies)
    capture_checkin(monitor_slug=spec.name,
                    status=MonitorStatus.OK if status in DONE else MonitorStatus.ERROR,
                    duration=duration_s,
                    monitor_config=monitor_config(spec))  # type: ignore[arg-type]


def _report_anomalies(spec: JobSpec, run_id: uuid.UUID | None,
                      anomalies: list[dict[str, Any]]) -> None:
    kinds = sorted({str(mark["kind"]) for mark in anomalies})
    with sentry_sdk.new_scope() as scope:
        scope.set_context("anomalies", {"run_id": str(run_id), "marks": anomalies})
        scope.set_tag("anomaly", ",".join(kinds))
        # One issue per job and kind of mark, not one per run.
        scope.fingerprint = ["cron-anomaly", spec.name, *kinds]
        reasons = "; ".join(str(mark["reason"]) for mark in anomalies)
        sentry_sdk.capture_message(f"{spec.name}: unusual run: {reasons}", level="warning")


def observers_for(settings: Settings) -> list[RunObserver]:
    """The monitoring observers the settings ask for (none without SENTRY_DSN)."""
    if init_sentry(settings):
        return [SentryCronObserver()]
    return []
