"""Outgoing mail: templates, one SMTP connection per batch, or `.eml` files without a host.

* Without `SMTP_HOST` (the embedded default) every message is written under
  `<DATA_DIR>/outbox/` so a newcomer can open what the service would have sent.
* User emails are rendered from `app/templates/email/<template>/<language>/` (`subject.txt`,
  `body.txt`, `body.html`) in the language of `users.preferences["language"]` (or
  `"locale"`), English when that language has no template.
* Every user email carries its one-click unsubscribe link (RFC 8058, app/mail/unsubscribe.py)
  in `List-Unsubscribe` and `List-Unsubscribe-Post` and in its footer; who may be emailed
  at all is app/mail/recipients.py's rule.
* `SMTPTransport` keeps one connection open for a whole batch and retries transient
  failures (4xx replies, disconnects, timeouts) on a fresh connection with tenacity;
  a permanent 5xx for one recipient is returned as `rejected`, never raised.
* `deliver()` is the at-most-once primitive used by app/mail/delivery.py: it starts the
  caller's hand-over record (`claim`, app/mail/handover.py, written on the database while the
  envelope travels), waits for it after the server's `354`, and only then sends the
  message with the end-of-data mark that makes the server take it.  Before that mark a
  failure delivers nothing and the send is safe to retry; after it, a lost reply is
  `unconfirmed`.
* Every SMTP operation ends within the time budget the mailer was built under
  (app/core/budget.py): connecting and each later exchange wait `SMTP_TIMEOUT` or what is left,
  whichever is less, and retries stop when the budget would be spent.
* User emails (`Mailer.compose`) are assembled straight into their wire bytes
  (`Outgoing`): the email package's generator and header folding cost more per message
  than the SMTP exchange itself.
"""

from __future__ import annotations

import base64
import email.policy
import functools
import hashlib
import os
import re
import smtplib
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal, Protocol

import jinja2
import tenacity

from app.config import Settings
from app.core.budget import Budget

LANGUAGE_KEYS = ("language", "locale")
DEFAULT_LANGUAGE = "en"

# 7bit: non-ASCII bodies go out quoted-printable, so no server needs 8BITMIME.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_LEADING_DOT = re.compile(rb"(?m)^\.")


# --- templates -----------------------------------------------------------------------------

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("app", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # templates ship with the code; no stat() per message
)


@functools.cache
def template_languages(template: str) -> frozenset[str]:
    prefix = f"email/{template}/"
    return frozenset(
        name[len(prefix):].split("/", 1)[0]
        for name in _env.list_templates()
        if name.startswith(prefix) and name.endswith("/body.txt")
    )


def resolve_language(preferences: Mapping[str, Any] | None, template: str) -> str:
    """The user's language when a template exists for it (`pt-BR` -> `pt`), else English."""
    available = template_languages(template)
    for key in LANGUAGE_KEYS:
        raw = (preferences or {}).get(key)
        if isinstance(raw, str) and raw.strip():
            code = re.split(r"[-_]", raw.strip().lower(), maxsplit=1)[0]
            if code in available:
                return code
    return DEFAULT_LANGUAGE


@functools.cache
def _template(name: str) -> jinja2.Template:
    return _env.get_template(name)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(template: str, language: str, context: Mapping[str, Any]) -> Rendered:
    if language not in template_languages(template):
        language = DEFAULT_LANGUAGE
    base = f"email/{template}/{language}/"
    return Rendered(
        subject=" ".join(_template(base + "subject.txt").render(context).split()),
        text=_template(base + "body.txt").render(context),
        html=_template(base + "body.html").render(context),
    )


# --- transports ----------------------------------------------------------------------------

DeliveryStatus = Literal["sent", "rejected", "unconfirmed", "lost_claim"]


@dataclass(frozen=True)
class Delivery:
    """What happened to one message.

    sent: the server accepted it (250).  rejected: a permanent refusal (5xx) for this
    recipient.  unconfirmed: the whole message was handed over but the reply was lost, so
    it was probably delivered and is never sent again.  lost_claim: the hand-over claim
    was refused (the run is no longer `running`); the SMTP transaction was abandoned.
    """

    status: DeliveryStatus
    detail: str = ""
    attempts: int = 1


class Claim(Protocol):
    """A hand-over record being written (app/mail/handover.py)."""

    def result(self) -> bool:
        """Wait for the write; True when the message may be handed over."""


# Starts recording the hand-over of the message about to go; the claim's result, awaited
# before the end-of-data mark, says whether it may be sent.
StartClaim = Callable[[], Claim]


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


class MailTransport(Protocol):
    # True while a message has been handed over (end-of-data sent) and its reply is not yet
    # read: if the caller is interrupted then, the message may have been taken.
    in_doubt: bool

    def send(self, message: EmailMessage) -> None: ...

    def deliver(self, message: Outgoing, claim: StartClaim,
                meanwhile: Callable[[], None] | None = None) -> Delivery:
        """`meanwhile` runs once while the server takes the message (it must not raise)."""


def is_transient_smtp(exc: BaseException) -> bool:
    """4xx replies, lost connections and timeouts: the same message may go through later."""
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPException):  # refused recipients, unsupported features
        return False
    return isinstance(exc, OSError)  # refused/reset connections, timeouts, TLS hiccups


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


def _collect(claim: Claim) -> None:
    """Nothing was taken: still read the claim's answer, so the next claim starts on a
    clean connection.  The message may be sent again; its claim is written again first."""
    with suppress(Exception):  # the error that matters is already propagating
        claim.result()


class _OutboxTransport:
    """Writes each message as `<DATA_DIR>/outbox/<date>-<subject>-<id>.eml`."""

    in_doubt = False  # a file is written whole (os.replace) or not at all

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, subject: str, message_id: str, data: bytes) -> None:
        name = re.sub(r"[^A-Za-z0-9]+", "-", subject or "message")[:60].strip("-")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        # Named after the Message-ID: writing the same message again replaces the file.
        digest = hashlib.sha256(message_id.encode()).hexdigest()[:12]
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # atomic: a reader never sees half a message
        os.replace(tmp, self.directory / f"{stamp}-{name}-{digest}.eml")

    def send(self, message: EmailMessage) -> None:
        self._write(str(message.get("Subject", "")), str(message.get("Message-ID", "")),
                    bytes(message))

    def deliver(self, message: Outgoing, claim: StartClaim,
                meanwhile: Callable[[], None] | None = None) -> Delivery:
        if meanwhile is not None:
            meanwhile()
        if not claim().result():
            return Delivery("lost_claim")
        self._write(message.subject, message.message_id, message.data)
        return Delivery("sent")

    def close(self) -> None:
        pass


class SMTPTransport:
    """One SMTP session reused for a batch, reopened after a transient failure."""

    def __init__(self, connect: Callable[[], smtplib.SMTP], *, max_attempts: int,
                 retry_wait: float, sleep: Callable[[float], None] = time.sleep,
                 timeout: float | None = None, budget: Budget | None = None) -> None:
        self._connect = connect
        self._smtp: smtplib.SMTP | None = None
        self.max_attempts = max_attempts
        self.retry_wait = retry_wait
        self.sleep = sleep
        self.timeout = timeout  # per operation; None: whatever `connect` set
        self.budget = budget or Budget()
        self.connections_opened = 0
        self.in_doubt = False
        self._retry = self._retrying()  # reused: built once, not once per message

    # --- connection ----------------------------------------------------------------------
    def _session(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = self._connect()
            if smtp.sock is not None:
                # The end-of-data mark goes out as its own small write after the claim;
                # with Nagle's algorithm it would wait for the server's delayed ACK.
                smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            smtp.ehlo_or_helo_if_needed()  # mail() does not greet by itself, sendmail() does
            self._smtp = smtp
            self.connections_opened += 1
        elif self.timeout is not None and self._smtp.sock is not None:
            # A session opened early in a long run: its next exchange still ends in budget.
            self._smtp.sock.settimeout(self.budget.timeout(self.timeout))
        return self._smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            with suppress(OSError):
                smtp.close()

    def close(self) -> None:
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts) | self.budget.stop(),
            wait=tenacity.wait_random_exponential(multiplier=self.retry_wait, max=30),
            retry=tenacity.retry_if_exception(is_transient_smtp),
            sleep=self.sleep,
            reraise=True,
        )

    # --- sending -------------------------------------------------------------------------
    def send(self, message: EmailMessage) -> None:
        """At-least-once send (admin mail): a lost reply is retried like any other failure."""
        for attempt in self._retrying():
            with attempt:
                try:
                    self._session().send_message(message)
                except BaseException:
                    # Whatever failed, the session may be mid-transaction: start afresh.
                    self._drop()
                    raise

    def deliver(self, message: Outgoing, claim: StartClaim,
                meanwhile: Callable[[], None] | None = None) -> Delivery:
        """Send one single-recipient message at most once, with `claim` as the arbiter.

        `meanwhile` (the caller composing its next message) runs after the end-of-data
        mark, while the server processes the message, instead of after its reply.
        """
        attempts = 0
        pending = [meanwhile] if meanwhile is not None else []
        for attempt in self._retry:
            with attempt:
                attempts += 1
                try:
                    result = self._transaction(message.wire, message.sender,
                                               message.recipient, claim, pending)
                except BaseException:
                    # Whatever failed, the session may be mid-transaction: start afresh.
                    self._drop()
                    raise
        while pending:  # not reached on this path (a refusal, say): run it anyway
            pending.pop()()
        return replace(result, attempts=attempts)

    def _transaction(self, data: bytes, sender: str, recipient: str, start: StartClaim,
                     meanwhile: list[Callable[[], None]]) -> Delivery:
        smtp = self._session()
        smtp.putcmd("mail", f"FROM:{smtplib.quoteaddr(sender)}")
        claim = start()  # sent while the server reads MAIL, written while the envelope goes
        try:
            refused = self._envelope(smtp, sender, recipient)
            won = claim.result()
        except BaseException:
            _collect(claim)  # no end-of-data mark was sent: nothing was taken
            raise
        if refused is not None:
            # The caller records it `failed`, unless the run lost its right to send.
            return refused if won else Delivery("lost_claim")
        if not won:
            # Dropping the connection before the end-of-data mark abandons the message.
            self._drop()
            return Delivery("lost_claim")
        self.in_doubt = True
        try:
            # The message and its end-of-data mark in one write: one wake-up of the server.
            smtp.send(data)
            while meanwhile:
                meanwhile.pop()()
            code, reply = smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            self.in_doubt = False
            return Delivery("unconfirmed", f"no reply after the end of data: {exc}"[:300])
        self.in_doubt = False
        if code == 250:
            return Delivery("sent")
        if 400 <= code < 500:
            raise smtplib.SMTPDataError(code, reply)  # not taken: retried
        return Delivery("rejected", f"{code} {reply.decode(errors='replace')}"[:300])

    def _envelope(self, smtp: smtplib.SMTP, sender: str, recipient: str) -> Delivery | None:
        """The replies to MAIL (already sent), RCPT and DATA, up to the server's 354; a 5xx
        for the recipient is returned."""
        code, reply = smtp.getreply()
        if code != 250:
            self._reset(smtp)
            raise smtplib.SMTPSenderRefused(code, reply, sender)  # 5xx: a setup problem
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            return self._refused(smtp, code, reply)
        code, reply = smtp.docmd("DATA")
        if code != 354:
            return self._refused(smtp, code, reply)
        return None

    def _refused(self, smtp: smtplib.SMTP, code: int, reply: bytes) -> Delivery:
        self._reset(smtp)
        if 400 <= code < 500:
            raise smtplib.SMTPResponseException(code, reply)
        return Delivery("rejected", f"{code} {reply.decode(errors='replace')}"[:300])

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()


# --- the mailer ----------------------------------------------------------------------------


class Mailer:
    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        self.settings = settings
        self.sleep = sleep
        self.budget = Budget.current()  # the run's, or the alerts', when built inside one

    @functools.cached_property
    def _sender(self) -> str:
        return parseaddr(self.settings.mail_from)[1]

    @functools.cached_property
    def _domain(self) -> str:
        address = self._sender
        return address.rsplit("@", 1)[1] if "@" in address else "voyagesmart-cron"

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

    @functools.cached_property
    def _from_header(self) -> str:
        name, address = parseaddr(self.settings.mail_from)
        return _header("From", formataddr((name, address), charset="utf-8"))

    def compose(self, template: str, to: str, language: str, context: Mapping[str, Any],
                *, unsubscribe_url: str, key: str | None = None) -> Outgoing:
        """A user email from a template, with its one-click unsubscribe link and a stable
        Message-ID.

        `unsubscribe_url` (the recipient's signed link) goes in the footer and in
        `List-Unsubscribe`, with `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
        (RFC 8058): a mail client's unsubscribe button then POSTs there, no page needed.

        `key` (the notification's dedupe key) fixes the Message-ID and the MIME boundary,
        so the same notification always carries the same id wherever it ends up.  The
        multipart/alternative structure is fixed (a text and an HTML part, both UTF-8 and
        base64), so it is written out directly rather than through `email.generator`,
        which at thousands of emails per run was most of the time not spent on the wire.
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

    def _open_smtp(self) -> smtplib.SMTP:
        s = self.settings
        assert s.smtp_host is not None
        timeout = self.budget.timeout(s.smtp_timeout)
        if s.smtp_security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=timeout,
                context=ssl.create_default_context(),
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=timeout)
            if s.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
        if s.smtp_user and s.smtp_pass is not None:
            smtp.login(s.smtp_user, s.smtp_pass.get_secret_value())
        return smtp

    @contextmanager
    def connection(self) -> Iterator[MailTransport]:
        """One transport for a batch of messages (one SMTP session, reused)."""
        if not self.settings.smtp_host:
            yield _OutboxTransport(self.settings.outbox_dir)
            return
        transport = SMTPTransport(
            self._open_smtp, max_attempts=self.settings.mail_max_attempts,
            retry_wait=self.settings.mail_retry_wait, sleep=self.sleep,
            timeout=self.settings.smtp_timeout, budget=self.budget,
        )
        try:
            yield transport
        finally:
            transport.close()

    def send(self, message: EmailMessage) -> None:
        with self.connection() as transport:
            transport.send(message)
