"""The wire format: what a message looks like, byte for byte, before any server sees it.

* Admin mail (alerts, the monthly report) is an `EmailMessage` built by `Composer.build`,
  7bit-safe: non-ASCII bodies go out quoted-printable, so no server needs 8BITMIME.
* A user email is assembled straight into its wire bytes by `Composer.compose` (`Outgoing`):
  the email package's generator and header folding cost more per message than the SMTP
  exchange itself.  Its structure is fixed (multipart/alternative, a text and an HTML part,
  both UTF-8 and base64), so writing it out directly loses nothing.
* Every user email carries its one-click unsubscribe link (RFC 8058, app/mail/unsubscribe.py)
  in `List-Unsubscribe` and `List-Unsubscribe-Post` and in its footer.
* A notification's dedupe key fixes its Message-ID and MIME boundary, so the same
  notification always carries the same id wherever it ends up.
"""

from __future__ import annotations

import base64
import email.policy
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Any

import sqlalchemy as sa

from app.config import Settings
from app.mail.templates import DEFAULT_LANGUAGE, render
from app.mail.unsubscribe import Links

_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class Outgoing:
    """A single-recipient user email (`data`: CRLF line ends) and its SMTP DATA form
    (`wire`: dot-stuffed, ending with the end-of-data mark), made once when composed."""

    sender: str
    recipient: str
    subject: str
    message_id: str
    data: bytes
    wire: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", _LEADING_DOT.sub(b"..", self.data) + b".\r\n")


def _header(name: str, value: str) -> str:
    """One header line, RFC 2047-encoded and folded only when it has to be."""
    value = " ".join(value.split())  # no CR/LF from data can start a header of its own
    if value.isascii() and len(name) + len(value) < 77:
        return f"{name}: {value}\r\n"
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n"


def _part(boundary: str, subtype: str, text: str) -> bytes:
    body = base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")
    return (f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + body


class Composer:
    """Messages from `MAIL_FROM`: admin mail (`build`) and user emails (`compose`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def _sender(self) -> str:
        return parseaddr(self.settings.mail_from)[1]

    @functools.cached_property
    def _domain(self) -> str:
        address = self._sender
        return address.rsplit("@", 1)[1] if "@" in address else "voyagesmart-cron"

    @functools.cached_property
    def _from_header(self) -> str:
        name, address = parseaddr(self.settings.mail_from)
        return _header("From", formataddr((name, address), charset="utf-8"))

    def build(self, to: list[str] | str, subject: str, text: str, html: str | None = None,
              *, message_id: str | None = None, headers: Mapping[str, str] | None = None
              ) -> EmailMessage:
        message = EmailMessage(policy=_POLICY)
        message["From"] = self.settings.mail_from
        message["To"] = ", ".join(to) if isinstance(to, list) else to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id or make_msgid(domain="voyagesmart-cron")
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def compose(self, template: str, to: str, language: str, context: Mapping[str, Any],
                *, unsubscribe_url: str, key: str | None = None) -> Outgoing:
        """A user email from a template, with its one-click unsubscribe link and a stable
        Message-ID (from `key`, the notification's dedupe key).

        `unsubscribe_url` (the recipient's signed link) goes in the footer and in
        `List-Unsubscribe`, with `List-Unsubscribe-Post: List-Unsubscribe=One-Click`: a
        mail client's unsubscribe button then POSTs there, no page needed.
        """
        rendered = render(template, language, {**context, "unsubscribe_url": unsubscribe_url})
        digest = hashlib.sha256((key or make_msgid()).encode()).hexdigest()[:32]
        message_id = f"<{digest}@{self._domain}>"
        boundary = f"=_{digest}"  # base64 lines never start with "--": no collision
        head = "".join((
            self._from_header,
            _header("To", to),
            _header("Subject", rendered.subject),
            _header("Date", formatdate(localtime=False, usegmt=True)),
            _header("Message-ID", message_id),
            # One line however long (RFC 5322 allows 998): folding a URL gains nothing.
            f"List-Unsubscribe: <{''.join(unsubscribe_url.split())}>\r\n",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            "Auto-Submitted: auto-generated\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n',
        ))
        data = b"".join((
            head.encode("ascii"),
            _part(boundary, "plain", rendered.text),
            _part(boundary, "html", rendered.html),
            f"--{boundary}--\r\n".encode("ascii"),
        ))
        return Outgoing(self._sender, to, rendered.subject, message_id, data)


class NotificationMessages:
    """The message of a `cron_notification` row; `prepare` makes it ahead of time, while
    the mail server is busy with the previous one.

    The message's list is its kind: its unsubscribe link names the kind and the row's
    user (app/mail/unsubscribe.py).
    """

    def __init__(self, composer: Composer, template: str, kind: str) -> None:
        self.composer = composer
        self.template = template
        self.kind = kind
        self.links = Links(composer.settings)
        self._ready: tuple[int, Outgoing] | None = None

    def _compose(self, row: sa.Row[Any]) -> Outgoing:
        payload: dict[str, Any] = dict(row.payload or {})
        return self.composer.compose(self.template, row.recipient,
                                     str(payload.get("language", DEFAULT_LANGUAGE)), payload,
                                     unsubscribe_url=self.links.url(self.kind, row.user_id),
                                     key=row.dedupe_key)

    def prepare(self, row: sa.Row[Any]) -> None:
        try:
            self._ready = (int(row.id), self._compose(row))
        except Exception:  # `take` composes it again and raises, outside the SMTP exchange
            self._ready = None

    def take(self, row: sa.Row[Any]) -> Outgoing:
        ready, self._ready = self._ready, None
        if ready is not None and ready[0] == row.id:
            return ready[1]
        return self._compose(row)
