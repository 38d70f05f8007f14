"""A small, realistic VoyageSmart dataset for the embedded development database.

Written through `app.voyagesmart.sample_data.AppWriter`, i.e. the way the app writes it:
sign-ups with
the trigger's premium year (some long expired), Stripe-paid subscriptions (one canceled at
the end of a period that has passed), a promo-granted tier, trips whose owner is an admin
participant, files referenced from trip media, chat and the JSONB documents of
accommodations and transportation.  With the local storage backend the referenced files
are written too, with an orphan and a stale temporary upload for storage-cleanup to find.

Seeding is idempotent: it does nothing when demo users already exist.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db import table_of
from app.models import User
from app.voyagesmart.sample_data import AppWriter

DEMO_DOMAIN = "demo.voyagesmart.app"
_NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Linus Pauling",
          "Marie Curie", "Nikola Tesla", "Rosalind Franklin", "Carl Sagan", "Hedy Lamarr",
          "Emmy Noether", "Richard Feynman"]
_PLACES = ["Lisbon", "Kyoto", "Reykjavik", "Cape Town", "Buenos Aires", "Hanoi", "Oslo",
           "Marrakesh"]


def _write_file(root: Path | None, bucket: str, key: str, when: dt.datetime) -> None:
    if root is None:
        return
    path = root / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"demo file {bucket}/{key}\n".encode())
    os.utime(path, (when.timestamp(), when.timestamp()))


def seed(engine: Engine, *, now: dt.datetime, rng: random.Random | None = None,
         storage_root: Path | None = None) -> dict[str, int]:
    rng = rng or random.Random(7)
    users_t = table_of(User)
    with engine.connect() as conn:
        if conn.scalar(sa.select(sa.func.count()).select_from(users_t)
                       .where(users_t.c.email.like(f"%@{DEMO_DOMAIN}"))):
            return {"users": 0, "note_already_seeded": 1}
    app = AppWriter(engine)
    users = []
    for i, name in enumerate(_NAMES):
        first = name.split()[0].lower()
        joined = now - dt.timedelta(days=420 - i * 30)  # the first four are past their year
        idle = 200 if i % 5 == 4 else rng.randint(0, 30)
        users.append(app.sign_up(
            f"{first}@{DEMO_DOMAIN}", at=joined, full_name=name,
            last_sign_in=max(joined, now - dt.timedelta(days=idle)),
            preferences={"language": "en", "email_notifications": i % 6 != 5}))
    paid = 0
    for i in (1, 2, 5, 8):  # Stripe-paid; user 8 canceled at the end of a past period
        app.stripe_subscribed(users[i], tier="ai" if i == 5 else "premium",
                              at=now - dt.timedelta(days=60),
                              subscription_id=f"sub_demo{i:03d}", customer_id=f"cus_demo{i:03d}",
                              period_end=now + dt.timedelta(days=20) if i != 8
                              else now - dt.timedelta(days=2))
        paid += 1
    app.canceled_at_period_end(users[8], now - dt.timedelta(days=20))

    specs = [("WELCOME10", "premium", 30, None, 0, 0), ("SUMMER24", "premium", -150, None, 0, 0),
             ("SPRING25", "ai", -20, 100, 3, 3), ("VIP50", "ai", 60, 5, 5, 5),
             ("LAUNCH", "premium", -400, 1000, 0, 0), ("FRIENDS", "premium", 90, 50, 1, 2)]
    for code, tier, days, max_uses, used, rows in specs:
        code_id = app.promo_code(code, tier=tier, at=now - dt.timedelta(days=500),
                                 max_uses=max_uses, expires_at=now + dt.timedelta(days=days),
                                 used_count=used)
        for k in range(rows):  # FRIENDS: one redemption the used_count RPC missed
            app.redeem(users[6 + k], code_id, now - dt.timedelta(days=5),
                       count_use=False)

    trips = 0
    for i, place in enumerate(_PLACES):
        owner = users[i % len(users)]
        start = now.date() + dt.timedelta(days=[7, 7, 3, 20, -10, 45, 7, 90][i])
        created = now - dt.timedelta(days=30 - i)
        trip = app.create_trip(owner, name=f"{place} {start.year}", at=created,
                               start_date=start, end_date=start + dt.timedelta(days=6),
                               destination=place)
        trips += 1
        for j, status in enumerate(["accepted", "pending", "declined"]):
            guest = users[(i + j + 1) % 9]  # users 9-11 join no trip
            app.invite(trip, at=created, user_id=guest if status != "pending" else None,
                       email=f"guest{i}{j}@{DEMO_DOMAIN}", status=status)
        old = now - dt.timedelta(days=60)
        media_key = f"{int(created.timestamp() * 1000)}_cover{i}.jpg"
        app.journal_media(trip, owner, media_key, created)
        _write_file(storage_root, "trip-media", media_key, old)
        chat_key = f"{trip}/photo{i}.jpg"
        app.chat_attachment(trip, owner, chat_key, created)
        _write_file(storage_root, "trip-media", chat_key, old)
        doc_key = f"{trip}/accommodations/booking{i}.pdf"
        app.accommodation(trip, f"Hotel {place}", [doc_key], created)
        _write_file(storage_root, "trip-documents", doc_key, old)
        ticket_key = f"{trip}/transportation/ticket{i}.pdf"
        app.transportation(trip, "flight", [ticket_key], created)
        _write_file(storage_root, "trip-documents", ticket_key, old)
        app.expense(trip, owner, created)
    # Nothing references these: an old orphan and a stale temporary upload.
    _write_file(storage_root, "trip-media", "orphaned-upload.jpg", now - dt.timedelta(days=90))
    _write_file(storage_root, "trip-documents", "tmp/draft.pdf", now - dt.timedelta(days=3))
    return {"users": len(users), "stripe_subscriptions": paid, "trips": trips,
            "promo_codes": len(specs)}
