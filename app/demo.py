"""A small, realistic VoyageSmart dataset for the embedded development database.

Seeding is idempotent: it does nothing when demo users already exist.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.models import (
    Document,
    Expense,
    PromoCode,
    PromoCodeRedemption,
    Subscription,
    Trip,
    TripMedia,
    TripParticipant,
    User,
)

DEMO_DOMAIN = "demo.voyagesmart.app"
STORAGE = "https://demo.supabase.co/storage/v1/object/public"
_NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Linus Pauling",
          "Marie Curie", "Nikola Tesla", "Rosalind Franklin", "Carl Sagan", "Hedy Lamarr",
          "Emmy Noether", "Richard Feynman"]
_PLACES = ["Lisbon", "Kyoto", "Reykjavik", "Cape Town", "Buenos Aires", "Hanoi", "Oslo",
           "Marrakesh"]


def seed(engine: Engine, *, now: dt.datetime, rng: random.Random | None = None) -> dict[str, int]:
    rng = rng or random.Random(7)
    with Session(engine) as session, session.begin():
        exists = session.scalar(
            sa.select(sa.func.count()).select_from(User).where(User.email.like(f"%@{DEMO_DOMAIN}"))
        )
        if exists:
            return {"users": 0, "note_already_seeded": 1}
        users = []
        for i, name in enumerate(_NAMES):
            first = name.split()[0].lower()
            idle = 200 if i % 5 == 4 else rng.randint(0, 30)
            users.append(User(
                id=uuid.uuid4(), email=f"{first}@{DEMO_DOMAIN}", full_name=name,
                avatar_url=f"{STORAGE}/avatars/{first}.png" if i % 2 == 0 else None,
                preferences={"language": "en", "email_notifications": i % 6 != 5},
                created_at=now - dt.timedelta(days=300 - i * 10),
                last_login=now - dt.timedelta(days=idle),
                stripe_customer_id=f"cus_demo{i:03d}" if i % 3 != 2 else None,
            ))
        session.add_all(users)

        tiers = ["premium", "ai", "premium", "free"]
        statuses = ["active", "active", "trialing", "past_due", "canceled"]
        subs = [
            Subscription(
                user_id=u.id, stripe_subscription_id=f"sub_demo{i:03d}",
                stripe_customer_id=u.stripe_customer_id, tier=tiers[i % len(tiers)],
                status=statuses[i % len(statuses)],
                current_period_start=now - dt.timedelta(days=10),
                current_period_end=now + dt.timedelta(days=20),
                cancel_at_period_end=False, created_at=now - dt.timedelta(days=60 - i),
                updated_at=now - dt.timedelta(days=1),
            )
            for i, u in enumerate(users) if u.stripe_customer_id
        ]
        session.add_all(subs)

        trips = []
        today = now.date()
        for i, place in enumerate(_PLACES):
            owner = users[i % len(users)]
            start = today + dt.timedelta(days=[7, 7, 3, 20, -10, 45, 7, 90][i])
            trip = Trip(
                id=uuid.uuid4(), name=f"{place} {start.year}", destination=place,
                description=f"A week in {place}.", start_date=start,
                end_date=start + dt.timedelta(days=6), preferences={}, is_private=i % 3 == 0,
                budget_total=Decimal(1500 + 250 * i), owner_id=owner.id,
                created_at=now - dt.timedelta(days=30 - i), updated_at=now - dt.timedelta(days=2),
            )
            trips.append(trip)
            session.add(trip)
            # No ORM relationships tell the unit of work that children come after their
            # trip, and SQLite enforces the foreign keys: write the trip first.
            session.flush()
            session.add(TripParticipant(trip_id=trip.id, user_id=owner.id, role="owner",
                                        invitation_status="accepted", share_ratio=Decimal("0.5"),
                                        created_at=trip.created_at))
            for j, status in enumerate(["accepted", "pending", "declined"]):
                guest = users[(i + j + 1) % len(users)]
                session.add(TripParticipant(
                    trip_id=trip.id, user_id=guest.id if status != "pending" else None,
                    invited_email=guest.email, role="participant", invitation_status=status,
                    created_at=trip.created_at))
            session.add(TripMedia(trip_id=trip.id, user_id=owner.id, type="image",
                                  url=f"{STORAGE}/trip-media/{trip.id}/cover.jpg",
                                  created_at=trip.created_at))
            session.add(Document(trip_id=trip.id, user_id=owner.id, type="pdf",
                                 name="Boarding pass",
                                 file_url=f"{STORAGE}/documents/{trip.id}.pdf",
                                 created_at=trip.created_at, updated_at=trip.created_at))
            session.add(Expense(trip_id=trip.id, amount=Decimal("42.50"), currency="EUR",
                                date=start, description="Dinner", paid_by=owner.id,
                                receipt_url=f"{STORAGE}/receipts/{trip.id}.jpg",
                                created_at=trip.created_at, updated_at=trip.created_at))

        promos = []
        specs = [
            ("WELCOME10", 30, None, 0), ("SUMMER24", -150, None, 0), ("SPRING25", -20, 100, 3),
            ("VIP50", 60, 5, 5), ("LAUNCH", -400, 1000, 2), ("FRIENDS", 90, 50, 1),
        ]
        for code, days, max_red, used in specs:
            promo = PromoCode(
                id=uuid.uuid4(), code=code, discount_type="percent",
                discount_value=Decimal(10), max_redemptions=max_red,
                current_redemptions=used + (1 if code == "FRIENDS" else 0),  # one drifted
                valid_from=now - dt.timedelta(days=500), valid_until=now + dt.timedelta(days=days),
                active=True, created_at=now - dt.timedelta(days=500),
            )
            promos.append(promo)
            session.add(promo)
            session.flush()
            for k in range(used):
                session.add(PromoCodeRedemption(promo_code_id=promo.id,
                                                user_id=users[k % len(users)].id,
                                                redeemed_at=now - dt.timedelta(days=5)))
        return {"users": len(users), "subscriptions": len(subs), "trips": len(trips),
                "promo_codes": len(promos)}
