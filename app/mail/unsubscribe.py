"""One-click unsubscribe (RFC 8058): the lists a user can leave, signed links, opt-outs.

1. Every user email belongs to a list, named by its notification kind (`LISTS`).  Its
   headers carry `List-Unsubscribe: <SERVICE_BASE_URL/unsubscribe?token=T>` and
   `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (app/mail/compose.py), and its footer the
   same link.
2. `T` names the list and the user (`users.id`) and carries an HMAC-SHA256 of both under
   `UNSUBSCRIBE_SECRET`, a secret of its own (not CRON_SECRET), cut to 128 bits.  Without
   the secret no one can make a token for another user or list, so the endpoint cannot be
   used to find out who is a user; a token is checked in constant time, against the
   previous secret too during a rotation (`UNSUBSCRIBE_SECRET_PREVIOUS`).  Links do not
   expire: an old email's link works as long as its secret is accepted.
3. `POST /unsubscribe?token=T` with the body `List-Unsubscribe=One-Click` (a mail client's
   one-click, or the confirmation page's button) records the opt-out, no login needed.
   `GET` only shows that page: mail scanners follow links, and must never unsubscribe
   anyone (app/http/unsubscribe.py).
4. Opt-outs live in `cron_email_opt_out`, one row per (user, list); `all` covers every
   list.  Recording one twice changes nothing.  Each job excludes them when it plans
   (app/mail/recipients.py) and expires what was planned before the click.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import table_of, upsert
from app.models import CronEmailOptOut

opt_outs = table_of(CronEmailOptOut)

TRIP_REMINDERS = "trip_reminder"
USER_ENGAGEMENT = "user_engagement"
ALL = "all"
# List -> its code in a token (one byte) and how a person reads its name.
LISTS: dict[str, tuple[int, str]] = {
    TRIP_REMINDERS: (1, "trip reminders"),
    USER_ENGAGEMENT: (2, "“we miss you” emails"),
}
_BY_CODE = {code: name for name, (code, _) in LISTS.items()}

_VERSION = 1
_PAYLOAD_BYTES = 18  # version, list, user id (16)
_MAC_BYTES = 16
_PAYLOAD_CHARS = 24  # base64url of 18 bytes, no padding needed
_MAC_CHARS = 22  # base64url of 16 bytes, padding dropped
TOKEN_LENGTH = _PAYLOAD_CHARS + 1 + _MAC_CHARS
_CONTEXT = b"voyagesmart-cron unsubscribe v1\x00"
# Outside production only, when UNSUBSCRIBE_SECRET is not set: links still work locally.
_DEVELOPMENT_KEY = b"voyagesmart-cron development unsubscribe key (not for production)"


class UnsubscribeNotConfigured(RuntimeError):
    """No key to sign links with (production without UNSUBSCRIBE_SECRET)."""


def _keys(settings: Settings) -> list[bytes]:
    secrets = [s for s in (settings.unsubscribe_secret, settings.unsubscribe_secret_previous)
               if s is not None]
    if secrets:
        return [s.get_secret_value().encode() for s in secrets]
    return [] if settings.is_production else [_DEVELOPMENT_KEY]


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Subscription:
    """What a valid token names."""

    user_id: uuid.UUID
    list: str

    @property
    def list_name(self) -> str:
        return LISTS[self.list][1]


class Links:
    """Makes and reads the unsubscribe links of one configuration."""

    def __init__(self, settings: Settings) -> None:
        self._keys = _keys(settings)
        self.base = f"{settings.public_base_url}/unsubscribe?token="

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def token(self, list_name: str, user_id: uuid.UUID) -> str:
        if not self._keys:
            raise UnsubscribeNotConfigured("UNSUBSCRIBE_SECRET is not set")
        payload = bytes((_VERSION, LISTS[list_name][0])) + user_id.bytes
        return f"{_b64(payload)}.{_b64(_mac(self._keys[0], payload))}"

    def url(self, list_name: str, user_id: uuid.UUID) -> str:
        return self.base + self.token(list_name, user_id)

    def read(self, token: str | None) -> Subscription | None:
        """The (user, list) a token names, or None for anything else, whatever is wrong
        with it (the caller answers every bad token the same way)."""
        if not token or len(token) != TOKEN_LENGTH or token[_PAYLOAD_CHARS] != ".":
            return None
        try:
            payload = base64.b64decode(token[:_PAYLOAD_CHARS], altchars=b"-_", validate=True)
            mac = base64.b64decode(token[_PAYLOAD_CHARS + 1:] + "==", altchars=b"-_",
                                   validate=True)
        except (binascii.Error, ValueError):
            return None
        # One spelling per token: no second string for the same link.
        if len(payload) != _PAYLOAD_BYTES or f"{_b64(payload)}.{_b64(mac)}" != token:
            return None
        matched = False
        for key in self._keys:  # every key, so timing does not say which one matched
            matched |= hmac.compare_digest(mac, _mac(key, payload))
        if not matched or payload[0] != _VERSION or payload[1] not in _BY_CODE:
            return None
        return Subscription(uuid.UUID(bytes=payload[2:]), _BY_CODE[payload[1]])


def record(engine: Engine, user_id: uuid.UUID, list_name: str, *, source: str,
           now: dt.datetime) -> bool:
    """Record that the user left `list_name` (or `ALL`); False when it already was."""
    stmt = (upsert(engine.dialect, opt_outs)
            .values(user_id=user_id, list=list_name, created_at=now, source=source)
            .on_conflict_do_nothing(index_elements=["user_id", "list"]))
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def left(engine: Engine, user_id: uuid.UUID) -> set[str]:
    """The lists a user left (`all` included as such)."""
    with engine.connect() as conn:
        return set(conn.execute(sa.select(opt_outs.c.list)
                                .where(opt_outs.c.user_id == user_id)).scalars())


def opted_out(user_id: sa.ColumnElement[uuid.UUID], list_name: str
              ) -> sa.ColumnElement[bool]:
    """SQL: the user of `user_id` left `list_name` (or every list)."""
    return sa.exists().where(opt_outs.c.user_id == user_id,
                             opt_outs.c.list.in_([list_name, ALL]))
