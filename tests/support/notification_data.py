"""Fixed datasets and a scripted SMTP server for the notification tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core.registry import JOBS, previous_fire
from app.models import AuthUser, Trip, TripParticipant, User
from tests.support.servers import ReceivedMail, SmtpSink, free_port


def user(email_addr: str, *, name: str | None = None, prefs: dict[str, Any] | None = None,
         last_login: dt.datetime | None = None, created: dt.datetime) -> User:
    """A VoyageSmart user as the app leaves it: `users.last_login` is the sign-up time (the
    app never updates it); the last sign-in (`last_login` here) is Supabase's
    `auth.users.last_sign_in_at`, written by `add_people`."""
    person = User(id=uuid.uuid4(), email=email_addr, full_name=name, preferences=prefs,
                  created_at=created, last_login=created)
    person.signed_in_at = last_login  # type: ignore[attr-defined]
    return person


def add_people(session: Session, people: list[User]) -> None:
    """Their Supabase accounts (auth.users), then their profile rows."""
    session.add_all([AuthUser(id=p.id, email=p.email, created_at=p.created_at,
                              last_sign_in_at=getattr(p, "signed_in_at", None))
                     for p in people])
    session.flush()
    session.add_all(people)


def trip(name: str, owner: User, start: dt.date, *, destination: str = "Lisbon",
         created: dt.datetime) -> Trip:
    return Trip(id=uuid.uuid4(), name=name, destination=destination, start_date=start,
                end_date=start + dt.timedelta(days=6), owner_id=owner.id, preferences={},
                is_private=False, created_at=created, updated_at=created)


def participant(t: Trip, u: User | None, status: str, *, email_addr: str | None = None,
                created: dt.datetime) -> TripParticipant:
    return TripParticipant(trip_id=t.id, user_id=u.id if u else None, role="member",
                           invited_email=email_addr or (u.email if u else None),
                           invitation_status=status, created_at=created)


@dataclass
class ReminderWorld:
    expected: set[str]
    not_expected: set[str]
    trip_name: str
    trip_id: uuid.UUID
    owner_id: uuid.UUID


def seed_reminders(engine: Engine, start: dt.date, now: dt.datetime) -> ReminderWorld:
    """Trip `Lisbon` starts on `start`; its travellers and the people who must not hear."""
    owner = user("owner@example.com", name="Olivia Owner", created=now)
    friend = user("friend@example.com", name="Franco Amico", prefs={"language": "it-IT"},
                  created=now)
    both = user("both@example.com", name="Bea Both", created=now)  # owner's co-traveller
    declined = user("declined@example.com", created=now)
    opted_out = user("optout@example.com", prefs={"email_notifications": False}, created=now)
    later_owner = user("later@example.com", created=now)
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, [owner, friend, both, declined, opted_out, later_owner])
        s.flush()
        lisbon = trip("Lisbon with friends", owner, start, created=now)
        later = trip("Later trip", later_owner, start + dt.timedelta(days=1), created=now)
        s.add_all([lisbon, later])
        s.flush()
        s.add_all([
            # The app adds the owner as an admin participant: one email, not two.
            TripParticipant(trip_id=lisbon.id, user_id=owner.id, role="admin",
                            invitation_status="accepted", created_at=now),
            participant(lisbon, friend, "accepted", created=now),
            participant(lisbon, both, "accepted", created=now),
            participant(lisbon, declined, "declined", created=now),
            participant(lisbon, None, "pending", email_addr="invited@example.com",
                        created=now),
            participant(lisbon, opted_out, "accepted", created=now),
            # Accepted, but the user deleted the account (the foreign key set it NULL).
            TripParticipant(trip_id=lisbon.id, user_id=None, role="member",
                            invited_email="ghost@example.com", invitation_status="accepted",
                            created_at=now),
        ])
    return ReminderWorld(
        expected={"owner@example.com", "friend@example.com", "both@example.com"},
        not_expected={"declined@example.com", "invited@example.com", "optout@example.com",
                      "ghost@example.com", "later@example.com"},
        trip_name="Lisbon with friends",
        trip_id=lisbon.id,
        owner_id=owner.id,
    )


def scheduled_reminder_day(now: dt.datetime, days_ahead: int = 7) -> dt.date:
    """The day a scheduled trip-reminders call at `now` serves: its slot's day (UTC) plus
    `days_ahead`.  Before the 08:00 fire that is yesterday's slot, not today."""
    return previous_fire(JOBS["trip-reminders"].schedule, now).date() + dt.timedelta(
        days=days_ahead)


def seed_travellers(engine: Engine, start: dt.date, now: dt.datetime, count: int) -> set[str]:
    """One trip on `start` with `count` accepted travellers (owner included)."""
    people = [user(f"traveller{i:04d}@example.com", name=f"Traveller {i}", created=now)
              for i in range(count)]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, people)
        s.flush()
        big = trip("Group trip", people[0], start, destination="Kyoto", created=now)
        s.add(big)
        s.flush()
        s.add(TripParticipant(trip_id=big.id, user_id=people[0].id, role="admin",
                              invitation_status="accepted", created_at=now))
        s.add_all([participant(big, p, "accepted", created=now) for p in people[1:]])
    return {p.email for p in people}


def seed_trips(engine: Engine, start: dt.date, now: dt.datetime, trips: int,
               per_trip: int) -> set[str]:
    """`trips` trips on `start`, each with an owner and `per_trip - 1` accepted travellers."""
    people = [user(f"t{t:04d}p{i:03d}@example.com", created=now)
              for t in range(trips) for i in range(per_trip)]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, people)
        s.flush()
        for t in range(trips):
            group = people[t * per_trip:(t + 1) * per_trip]
            one = trip(f"Trip {t}", group[0], start, created=now)
            s.add(one)
            s.flush()
            s.add(TripParticipant(trip_id=one.id, user_id=group[0].id, role="admin",
                                  invitation_status="accepted", created_at=now))
            s.add_all([participant(one, p, "accepted", created=now) for p in group[1:]])
    return {p.email for p in people}


def recipients(sink: SmtpSink) -> Counter[str]:
    """How many messages each address received."""
    with sink.lock:
        return Counter(rcpt for item in sink.received for rcpt in item.rcpt_tos)


@dataclass
class ScriptedSmtp(SmtpSink):
    """An aiosmtpd server that misbehaves at precise moments.

    drop_on_mail: MAIL command numbers (1-based, counted across connections) at which the
    connection is cut before answering.  tempfail_rcpt: addresses answered 451 once.
    reject_rcpt: addresses answered 550 always.  drop_after_data: message numbers stored
    and then cut before the 250 (the reply is lost).  delay: seconds between storing a
    message and answering 250 (a slow server).
    """

    drop_on_mail: set[int] = field(default_factory=set)
    tempfail_rcpt: set[str] = field(default_factory=set)
    reject_rcpt: set[str] = field(default_factory=set)
    drop_after_data: set[int] = field(default_factory=set)
    delay: float = 0.0
    mails: int = 0
    datas: int = 0
    connections: int = 0
    open_now: int = 0  # connections open at this moment
    most_open: int = 0  # the most ever open at once

    def start(self) -> ScriptedSmtp:
        self.port = free_port()
        self.controller = _CountingController(self, _ScriptedHandler(self),
                                              hostname=self.host, port=self.port)
        self.controller.start()
        return self


class _CountingController(Controller):
    """Counts the connections open at once, as the server sees them opened and closed."""

    def __init__(self, sink: ScriptedSmtp, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink

    def factory(self) -> SMTP:
        sink = self.sink

        class Counted(SMTP):
            def connection_made(self, transport: Any) -> None:
                with sink.lock:
                    sink.open_now += 1
                    sink.most_open = max(sink.most_open, sink.open_now)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                with sink.lock:
                    sink.open_now -= 1
                super().connection_lost(exc)

        return Counted(self.handler, **self.SMTP_kwargs)


class _ScriptedHandler:
    def __init__(self, sink: ScriptedSmtp) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sink.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.sink.mails += 1
        if self.sink.mails in self.sink.drop_on_mail:
            server.transport.abort()
            return "421 gone"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.sink.reject_rcpt:
            return "550 5.1.1 no such user"
        if address in self.sink.tempfail_rcpt:
            self.sink.tempfail_rcpt.discard(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.sink.lock:
            self.sink.datas += 1
            number = self.sink.datas
            self.sink.received.append(
                ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message)  # type: ignore[arg-type]
            )
        if number in self.sink.drop_after_data:
            server.transport.abort()
            return "250 OK"
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        return "250 OK"
