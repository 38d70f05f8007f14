"""Outgoing mail: one SMTP connection per batch, or `.eml` files when no SMTP host is set.

Without `SMTP_HOST` (the embedded default) every message is written under
`<DATA_DIR>/outbox/` so a newcomer can open what the service would have sent.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from app.config import Settings


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class _OutboxTransport:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def send(self, message: EmailMessage) -> None:
        subject = re.sub(r"[^A-Za-z0-9]+", "-", str(message.get("Subject", "message")))[:60]
        name = f"{formatdate(usegmt=True)[5:25].replace(' ', '_').replace(':', '')}"
        path = self.directory / f"{name}-{subject.strip('-')}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(bytes(message))


class _SMTPTransport:
    def __init__(self, smtp: smtplib.SMTP) -> None:
        self.smtp = smtp

    def send(self, message: EmailMessage) -> None:
        self.smtp.send_message(message)


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, to: list[str] | str, subject: str, text: str, html: str | None = None
              ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = ", ".join(to) if isinstance(to, list) else to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain="voyagesmart-cron")
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def _open_smtp(self) -> smtplib.SMTP:
        s = self.settings
        assert s.smtp_host is not None
        if s.smtp_security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                context=ssl.create_default_context(),
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
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
        smtp = self._open_smtp()
        try:
            yield _SMTPTransport(smtp)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def send(self, message: EmailMessage) -> None:
        with self.connection() as transport:
            transport.send(message)
