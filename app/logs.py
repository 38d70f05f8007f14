"""Structured log lines: one JSON object per line, secrets and email addresses redacted.

Vercel and most log stores index JSON lines by field, so `task`, `run_id`, `status` and
`duration_ms` (passed as `extra=` by the runner) become searchable.  Every secret in the
settings is replaced wherever it appears; email addresses are hidden at INFO and above,
because VoyageSmart's users are personal data and only DEBUG is meant for a developer's own
terminal.

The redaction of secrets, bearer tokens, URL passwords and secret-looking query parameters
(`?secret=…`, `?token=…`) also runs on every log record the process creates, whoever logs
it and however it is formatted: uvicorn's access log (which prints the query string),
`fastapi run`'s, a library's.  It is a log record factory, installed with the settings.
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
# A query parameter whose name says it carries a credential, e.g. ?secret=… in a request
# line: the service never accepts one there, but a caller may still send it.
QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:[a-z0-9_-]*(?:secret|token|passw(?:or)?d|pwd|api[_-]?key|apikey|"
    r"signature|auth)[a-z0-9_-]*|key|sig)=)[^&;\s\"']*")
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
        text = QUERY_SECRET.sub(r"\1[redacted]", text)
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

# Every secret any configured app of this process knows (tests build several).
_known_secrets: set[str] = set()
_record_redactor = Redactor()
_base_factory = logging.getLogRecordFactory()


def _redacted(value: Any) -> Any:
    return _record_redactor(value, hide_emails=False) if isinstance(value, str) else value


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record, from any logger: secrets out of the message, its arguments (kept
    apart, so formatters such as uvicorn's access formatter still find them) and its
    traceback text."""
    record = _base_factory(*args, **kwargs)
    record.msg = _redacted(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redacted(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: _redacted(arg) for key, arg in record.args.items()}
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = _redacted(logging.Formatter().formatException(record.exc_info))
    return record


def _install_record_redaction(settings: Settings) -> None:
    global _record_redactor
    _known_secrets.update(secrets_of(settings))
    _record_redactor = Redactor(sorted(_known_secrets, key=len, reverse=True))
    if logging.getLogRecordFactory() is not _redacting_factory:
        logging.setLogRecordFactory(_redacting_factory)


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Install (or refresh) the one handler of the `app` logger; safe to call per app."""
    _install_record_redaction(settings)
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
