"""Structured log lines: one JSON object per line, secrets and email addresses redacted.

Vercel and most log stores index JSON lines by field, so `task`, `run_id`, `status` and
`duration_ms` (passed as `extra=` by the runner) become searchable.  Every secret in the
settings is replaced wherever it appears; email addresses are hidden at INFO and above,
because VoyageSmart's users are personal data and only DEBUG is meant for a developer's own
terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

from pydantic import SecretStr

from app.config import Settings

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
# user:password@ inside a URL (database URLs, DSNs).
URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings, whoever added the field."""
    values = []
    for _name, value in settings:
        if isinstance(value, SecretStr) and value.get_secret_value():
            values.append(value.get_secret_value())
    # Longest first, so a secret containing another is replaced whole.
    return sorted(set(values), key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = secrets or []

    def __call__(self, text: str, *, hide_emails: bool) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        text = BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
        text = URL_CREDENTIALS.sub(r"\1:[redacted]@", text)
        if hide_emails:
            text = EMAIL.sub("[email]", text)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        hide = record.levelno >= logging.INFO
        body: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage(), hide_emails=hide),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if not isinstance(value, str | int | float | bool | type(None)):
                value = str(value)
            if isinstance(value, str):
                value = self.redact(value, hide_emails=hide)
            body[key] = value
        if record.exc_info:
            body["error"] = self.redact(self.formatException(record.exc_info),
                                        hide_emails=hide)
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record), hide_emails=record.levelno >= logging.INFO)


_HANDLER_NAME = "voyagesmart-cron"


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Install (or refresh) the one handler of the `app` logger; safe to call per app."""
    logger = logging.getLogger("app")
    redact = Redactor(secrets_of(settings))
    formatter: logging.Formatter = (
        JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact))
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None or stream is not None:
        if handler is not None:
            logger.removeHandler(handler)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_HANDLER_NAME)
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    logger.setLevel(settings.log_level)
    return handler
