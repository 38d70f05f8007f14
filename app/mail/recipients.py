"""Who of a job's candidates may be emailed: one rule for every user email.

A job streams its candidates in one query, with the columns `candidate_columns` adds, and
asks `Screen.admit` about each row.  A candidate is skipped, counted, and named by user id
(never by address) in the run's details when:

1. they left the email's list, or every list (`cron_email_opt_out`, app/mail/unsubscribe.py):
   `unsubscribed`;
2. `users.preferences` is not a JSON object: a string (such as an object stored as
   text), an array, a number, or on SQLite text that is not JSON at all:
   `unreadable_preferences`.  Whether such a user opted out cannot be told, so they get
   nothing rather than a guess;
3. `users.preferences` says `email_notifications: false`: `opted_out`;
4. the list needs consent (ENGAGEMENT_REQUIRE_CONSENT) and none is recorded
   (`cron_email_consent`): `no_consent`;
5. no address, or one this service cannot send to (not a plain ASCII `local@domain.tld`):
   `no_email`, `invalid_email`.

Everyone else is emailed: one bad row is that row's problem, never the run's.  The
preferences are typed in SQL (`jsonb_typeof`; SQLite's `json_valid` and `json_type`) and
only an object reaches Python, so a value the driver could not decode never stops the
stream.  The opt-out and consent tests are semi-joins in the same query: no query per row.

Consent is recorded by an operator, from wherever it was collected, with
`voyagesmart-cron consent import` (`import_consent`).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.db import JSONType, table_of, upsert
from app.mail.unsubscribe import opted_out
from app.models import CronEmailConsent, User

consents = table_of(CronEmailConsent)
users = table_of(User)

# Users named per reason in a run's details.
NAMED = 20
REASONS = ("unsubscribed", "unreadable_preferences", "opted_out", "no_consent", "no_email",
           "invalid_email")
OPT_OUT_KEY = "email_notifications"
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
# What an SMTP client can put in RCPT TO without SMTPUTF8 (the WHATWG "valid email
# address", with a dot required in the domain).
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


class json_kind(FunctionElement[str]):  # a SQL function, named like one
    """The JSON type of a value: object, array, string, number, boolean, null; SQL NULL
    for SQL NULL; on SQLite also `invalid` for text that is not JSON."""

    type = sa.String()
    name = "json_kind"
    inherit_cache = True


@compiles(json_kind, "postgresql")
def _json_kind_pg(element: json_kind, compiler: SQLCompiler, **kw: Any) -> str:
    return f"jsonb_typeof({compiler.process(element.clauses, **kw)})"


@compiles(json_kind, "sqlite")
def _json_kind_sqlite(element: json_kind, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    # json_type() raises on text that is not JSON: ask json_valid() first.
    return (f"CASE WHEN {arg} IS NULL THEN NULL WHEN json_valid({arg}) "
            f"THEN json_type({arg}) ELSE 'invalid' END")


def readable(preferences: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """SQL: the preferences are an object, or absent (no preference set)."""
    kind = json_kind(preferences)
    return sa.or_(kind.is_(None), kind.in_(("object", "null")))


def consented(user_id: sa.ColumnElement[uuid.UUID], list_name: str
              ) -> sa.ColumnElement[bool]:
    return sa.exists().where(consents.c.user_id == user_id, consents.c.list == list_name)


def candidate_columns(list_name: str, *, consent: bool) -> list[sa.ColumnElement[Any]]:
    """Columns over `users` that `Screen.admit` reads: `preferences` (an object or None),
    `preferences_readable`, `unsubscribed` and, when the list needs it, `consented`."""
    ok = readable(users.c.preferences)
    columns: list[sa.ColumnElement[Any]] = [
        sa.type_coerce(sa.case((ok, users.c.preferences), else_=sa.null()),
                       JSONType).label("preferences"),
        ok.label("preferences_readable"),
        opted_out(users.c.id, list_name).label("unsubscribed"),
    ]
    if consent:
        columns.append(consented(users.c.id, list_name).label("consented"))
    return columns


def wants_email(preferences: dict[str, Any] | None) -> bool:
    """False when the user opted out (`email_notifications: false`); absent means yes."""
    value = (preferences or {}).get(OPT_OUT_KEY, True)
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return value is None or bool(value)


def valid_address(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 254 and bool(_ADDRESS.fullmatch(value))


@dataclass
class Screen:
    """Admits candidates of one list and keeps count of the others."""

    list_name: str
    require_consent: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    named: dict[str, list[str]] = field(default_factory=dict)

    def reason(self, row: Any) -> str | None:
        if row.unsubscribed:
            return "unsubscribed"
        if not row.preferences_readable:
            return "unreadable_preferences"
        if not wants_email(row.preferences):
            return "opted_out"
        if self.require_consent and not row.consented:
            return "no_consent"
        if row.email is None or not str(row.email).strip():
            return "no_email"
        if not valid_address(row.email):
            return "invalid_email"
        return None

    def admit(self, row: Any) -> bool:
        reason = self.reason(row)
        if reason is None:
            return True
        self.counts[reason] += 1
        names = self.named.setdefault(reason, [])
        if len(names) < NAMED:
            names.append(str(row.user_id))
        return False

    @classmethod
    def restored(cls, list_name: str, saved: dict[str, Any], *,
                 require_consent: bool = False) -> Screen:
        """A screen from the `{"counts", "named"}` its chunks reported, summed."""
        named = {k: list(v)[:NAMED] for k, v in saved.get("named", {}).items()}
        return cls(list_name, require_consent=require_consent,
                   counts=Counter({k: int(v) for k, v in saved.get("counts", {}).items()}),
                   named=named)

    def saved(self) -> dict[str, Any]:
        """What `restored` takes back (a chunk's counters)."""
        return {"counts": dict(self.counts), "named": self.named}

    @property
    def declined(self) -> int:
        """Candidates who chose not to get this email (opt-outs of either kind)."""
        return self.counts["unsubscribed"] + self.counts["opted_out"]

    @property
    def unreachable(self) -> int:
        """Candidates skipped because their row could not be used."""
        return sum(self.counts[r] for r in ("unreadable_preferences", "no_email",
                                            "invalid_email"))

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": {r: self.counts[r] for r in REASONS if self.counts[r]},
                "skipped_users": {r: self.named[r] for r in REASONS if r in self.named}}


# --- consent ----------------------------------------------------------------------------

_BATCH = 1000
_LINES_NAMED = 20


@dataclass
class ConsentImport:
    lines: int = 0
    recorded: int = 0
    already_recorded: int = 0
    unknown_users: list[int] = field(default_factory=list)  # line numbers
    invalid: list[int] = field(default_factory=list)  # line numbers

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "recorded": self.recorded,
                "already_recorded": self.already_recorded,
                "unknown_users": len(self.unknown_users),
                "unknown_user_lines": self.unknown_users[:_LINES_NAMED],
                "invalid": len(self.invalid), "invalid_lines": self.invalid[:_LINES_NAMED]}


@dataclass(frozen=True)
class _Entry:
    line: int
    user_id: uuid.UUID | None
    email: str | None
    granted_at: dt.datetime


def _entries(reader: Iterable[dict[str, str | None]], now: dt.datetime,
             report: ConsentImport) -> Iterator[_Entry]:
    for number, raw in enumerate(reader, start=2):  # line 1 is the header
        report.lines += 1
        record = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        try:
            user_id = uuid.UUID(record["user_id"]) if record.get("user_id") else None
            granted = (dt.datetime.fromisoformat(record["granted_at"])
                       if record.get("granted_at") else now)
        except ValueError:
            report.invalid.append(number)
            continue
        email = record.get("email") or None
        if user_id is None and email is None:
            report.invalid.append(number)
            continue
        if granted.tzinfo is None:
            granted = granted.replace(tzinfo=dt.UTC)
        yield _Entry(number, user_id, email, granted)


def import_consent(engine: Engine, source_file: Iterable[str], *, list_name: str,
                   source: str, now: dt.datetime, dry_run: bool = False) -> ConsentImport:
    """Record consent from a CSV with a header naming `user_id` or `email` (either per
    line) and optionally `granted_at` (ISO 8601; default: now).  Users are matched in
    batches; a user already recorded keeps the first record."""
    report = ConsentImport()
    reader = csv.DictReader(source_file)
    if not reader.fieldnames or not {"user_id", "email"} & {
            name.strip().lower() for name in reader.fieldnames if name}:
        raise ValueError("the CSV header must name a user_id or an email column")
    entries = _entries(reader, now, report)
    while batch := list(islice(entries, _BATCH)):
        ids = {e.user_id for e in batch if e.user_id is not None}
        emails = {e.email.lower() for e in batch if e.email is not None}
        with engine.connect() as conn:
            known_ids = set(conn.execute(sa.select(users.c.id).where(users.c.id.in_(ids)))
                            .scalars()) if ids else set()
            # Addresses match whatever their case (a scan of `users` per batch: an
            # operator's import, not a job's hot path).
            by_email = {email.lower(): uid for uid, email in conn.execute(
                sa.select(users.c.id, users.c.email)
                .where(sa.func.lower(users.c.email).in_(emails)))
            } if emails else {}
        rows = []
        for entry in batch:
            user_id = (entry.user_id if entry.user_id in known_ids
                       else by_email.get((entry.email or "").lower()))
            if user_id is None:
                report.unknown_users.append(entry.line)
                continue
            rows.append({"user_id": user_id, "list": list_name,
                         "granted_at": entry.granted_at, "recorded_at": now,
                         "source": source[:200]})
        unique = list({row["user_id"]: row for row in reversed(rows)}.values())
        if not unique:
            continue
        with engine.begin() as conn:
            present = set(conn.execute(
                sa.select(consents.c.user_id).where(
                    consents.c.list == list_name,
                    consents.c.user_id.in_([row["user_id"] for row in unique]))
            ).scalars())
            fresh = [row for row in unique if row["user_id"] not in present]
            if fresh and not dry_run:
                conn.execute(upsert(engine.dialect, consents)
                             .on_conflict_do_nothing(index_elements=["user_id", "list"]),
                             fresh)
        report.recorded += len(fresh)
        report.already_recorded += len(rows) - len(fresh)
    return report
