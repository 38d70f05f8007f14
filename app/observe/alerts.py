"""Failure alerts: an email to the admins and a JSON POST to `WEBHOOK_URL`.

Each channel reports `sent` only once its server accepted the alert, `skipped` when it is
not configured, `failed: <error>` otherwise, naming the library's exception (httpx's,
smtplib's).  An alert that cannot be sent is logged and swallowed here: it must never hide or
change the job's own status, so no channel's error ever reaches the runner to be classified.
"""

from __future__ import annotations

import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from app.config import Settings
from app.core.budget import Budget
from app.mail.smtp import Mailer

if TYPE_CHECKING:
    from app.core.runner import RunOutcome

log = logging.getLogger("app.observe.alerts")


def _payload(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "event": "cron_job_failed",
        "service": "voyagesmart-cron",
        "task": outcome.task,
        "run_id": str(outcome.run_id),
        "status": outcome.status,
        "message": outcome.message,
        "attempts": outcome.attempts,
        "slot": outcome.slot.isoformat() if outcome.slot else None,
        "trigger": outcome.trigger,
        "duration_ms": outcome.duration_ms,
    }


def _email(settings: Settings, outcome: RunOutcome) -> bool:
    if not settings.admin_emails:
        return False
    mailer = Mailer(settings)
    lines = [f"{key}: {value}" for key, value in _payload(outcome).items()]
    text = (
        f"The cron job {outcome.task} failed after {outcome.attempts} attempt(s).\n\n"
        + "\n".join(lines)
        + "\n\nSee the run log (cron_job_log) or the dashboard for details.\n"
    )
    message = mailer.build(
        settings.admin_emails, f"[voyagesmart-cron] {outcome.task} failed", text
    )
    mailer.send(message)
    return True


def _webhook(settings: Settings, outcome: RunOutcome) -> bool:
    if not settings.webhook_url:
        return False
    response = httpx.post(
        settings.webhook_url, json=_payload(outcome),
        timeout=Budget.current().timeout(settings.webhook_timeout),
    )
    response.raise_for_status()
    return True


def _send(name: str, sender: Any, settings: Settings, outcome: RunOutcome) -> str:
    try:
        return "sent" if sender(settings, outcome) else "skipped"
    except Exception as exc:  # an alert channel failing must not mask the job status
        log.warning("alert via %s failed: %s", name, type(exc).__name__)
        return f"failed: {type(exc).__name__}"


def send_failure_alerts(settings: Settings, outcome: RunOutcome) -> dict[str, str]:
    """Send every configured alert, the channels side by side (each within the caller's
    time budget, app/core/budget.py); return what happened to each, never raise."""
    channels = (("email", _email), ("webhook", _webhook))
    with ThreadPoolExecutor(len(channels), thread_name_prefix="alert") as pool:
        # Each thread runs in a copy of this context, so it sees the budget.
        futures = {name: pool.submit(contextvars.copy_context().run, _send, name, sender,
                                     settings, outcome)
                   for name, sender in channels}
        return {name: future.result() for name, future in futures.items()}
