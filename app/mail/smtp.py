"""The transport: one SMTP connection per batch, or `.eml` files when there is no server.

* Without `SMTP_HOST` (the embedded default) every message is written under
  `<DATA_DIR>/outbox/` so a newcomer can open what the service would have sent.
* `SMTPTransport` keeps one connection open for a whole batch and retries transient
  failures on a fresh connection with tenacity; a permanent 5xx for one recipient is
  returned as `rejected`, never raised.
* The SMTP rule lives here, once (`is_transient`): 4xx replies, lost or refused
  connections and timeouts may go through later; other SMTP failures will not.  When the
  retries are spent an smtplib failure leaves this module as the project's error
  (`MailUnavailable`, a `TransientError`, or the permanent `MailRefused`), so the runner
  decides without knowing smtplib.  Socket errors (`ConnectionRefusedError`, `TimeoutError`
  …) are Python's own and leave as they are: the runner and the alerts read them as such.
* `deliver()` is the once-only primitive of app/mail/delivery.py (which states the rule it
  serves): the caller's hand-over claim travels with the envelope and is awaited after the
  server's `354`; only a claim won lets the end-of-data mark go.
* Every SMTP operation ends within the time budget the mailer was built under
  (app/core/budget.py): connecting and each later exchange wait `SMTP_TIMEOUT` or what is
  left, whichever is less, and retries stop when the budget would be spent.
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol

import tenacity

from app.config import Settings
from app.core.budget import Budget
from app.core.errors import TransientError
from app.mail.compose import Composer, Outgoing
from app.observe import usage


class MailUnavailable(TransientError):
    """The mail server could not take the message now (4xx, connection lost or refused,
    timeout); the same send may go through later."""


class MailRefused(Exception):
    """The mail server refused for good (a 5xx to the sender, authentication, a missing
    feature): sending again would get the same answer."""


def is_transient(exc: BaseException) -> bool:
    """The SMTP rule: may the same message go through later?"""
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPException):  # refused recipients, unsupported features
        return False
    return isinstance(exc, OSError)  # refused/reset connections, timeouts, TLS hiccups


@contextmanager
def _project_errors() -> Iterator[None]:
    """smtplib's failures, once retries are spent, as the project's."""
    try:
        yield
    except smtplib.SMTPException as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if is_transient(exc):
            raise MailUnavailable(detail) from exc
        raise MailRefused(detail) from exc


DeliveryStatus = Literal["sent", "rejected", "unconfirmed", "lost_claim"]


@dataclass(frozen=True)
class Delivery:
    """What happened to one message.

    sent: the server accepted it (250).  rejected: a permanent refusal (5xx) for this
    recipient.  unconfirmed: the whole message was handed over but the reply was lost.
    lost_claim: the hand-over claim was refused; the SMTP transaction was abandoned.
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


class MailTransport(Protocol):
    # True while a message has been handed over (end-of-data sent) and its reply is not yet
    # read: if the caller is interrupted then, the message may have been taken.
    in_doubt: bool

    def send(self, message: EmailMessage) -> None: ...

    def deliver(self, message: Outgoing, claim: StartClaim,
                meanwhile: Callable[[], None] | None = None) -> Delivery:
        """`meanwhile` runs once while the server takes the message (it must not raise)."""


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
        self.meter = usage.Meter.current()  # built in the run: its threads count into it
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
            retry=tenacity.retry_if_exception(is_transient),
            sleep=self.sleep,
            reraise=True,
        )

    # --- sending -------------------------------------------------------------------------
    def send(self, message: EmailMessage) -> None:
        """At-least-once send (admin mail): a lost reply is retried like any other failure."""
        with _project_errors():
            for attempt in self._retrying():
                with attempt:
                    try:
                        usage.count(usage.Service.SMTP, self.meter)
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
        with _project_errors():
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
        usage.count(usage.Service.SMTP, self.meter)
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


class Mailer(Composer):
    """Composes messages (app/mail/compose.py) and sends them over the configured transport,
    within the time budget current when it was built (the run's, or the alerts')."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        super().__init__(settings)
        self.sleep = sleep
        self.budget = Budget.current()

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
