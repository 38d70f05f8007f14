"""promo-cleanup on both databases: deactivate, delete, raise counts, idempotent, dry run.

Codes and redemptions are written the way the app writes them (app/sample_data.py): a
redemption grants the code's tier, inserts a redemption row and bumps `used_count`, and
either of the last two may be missing (the app only logs their failure).
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import PromoCode, PromoCodeRedemption
from app.runner import Runner
from app.sample_data import AppWriter
from tests.conftest import FixedClock

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _seed(engine: Engine) -> dict[str, uuid.UUID]:
    app = AppWriter(engine)
    alice = app.sign_up("alice@example.com", at=NOW - 400 * DAY)
    bob = app.sign_up("bob@example.com", at=NOW - 400 * DAY)
    ids: dict[str, uuid.UUID] = {}

    def code(name: str, tier: str, until_days: float | None, max_uses: int | None,
             used: int = 0, active: bool = True) -> uuid.UUID:
        ids[name] = app.promo_code(
            name, tier=tier, at=NOW - 365 * DAY, max_uses=max_uses, used_count=used,
            is_active=active, expires_at=None if until_days is None else NOW + until_days * DAY)
        return ids[name]

    code("VALID", "premium", 30, None)
    code("NOEXPIRY", "ai", None, None)
    code("EXPIRED_RECENT", "premium", -10, None)                  # deactivate, keep (< 90 d)
    code("EXPIRED_OLD", "premium", -200, None)                    # delete: never redeemed
    old = code("EXPIRED_OLD_REDEEMED", "ai", -200, None)          # deactivate, keep forever
    app.redeem(alice, old, NOW - 300 * DAY)
    exhausted = code("EXHAUSTED", "premium", 30, 1)               # deactivate (1/1)
    app.redeem(alice, exhausted, NOW - DAY)
    lagging = code("LAGGING", "ai", 30, 2)                        # the count RPC failed twice:
    app.redeem(alice, lagging, NOW - DAY, count_use=False)        # 0 -> 2 rows, then used up
    app.redeem(bob, lagging, NOW - DAY, count_use=False)
    code("ROWS_PURGED", "premium", 30, 10, used=7)                # 7 uses, rows gone: stays 7
    unrecorded = code("EXPIRED_OLD_COUNTED", "premium", -200, None)  # redemption row lost:
    app.redeem(bob, unrecorded, NOW - 300 * DAY, record_row=False)   # count 1 keeps it
    return ids


def _state(engine: Engine) -> dict[str, tuple[bool, int]]:
    with engine.connect() as conn:
        return {
            row.code: (row.is_active, row.used_count)
            for row in conn.execute(sa.select(PromoCode.__table__))
        }


def _run(engine: Engine, settings: Settings, *, dry_run: bool = False) -> dict[str, int]:
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    outcome = runner.run("promo-cleanup", trigger="cli", dry_run=dry_run)
    assert outcome.status == "success", outcome.message
    return {**outcome.details["steps"], "by_tier": outcome.details["by_tier"]}


def test_cleanup_fixes_every_kind_of_problem(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    steps = _run(engine, settings)
    assert steps["codes_deactivated"] == 5
    assert steps["codes_deleted"] == 1
    assert steps["used_counts_raised"] == 1
    assert _state(engine) == {
        "VALID": (True, 0),
        "NOEXPIRY": (True, 0),
        "EXPIRED_RECENT": (False, 0),
        "EXPIRED_OLD_REDEEMED": (False, 1),
        "EXHAUSTED": (False, 1),
        "LAGGING": (False, 2),
        "ROWS_PURGED": (True, 7),          # never lowered to the rows left
        "EXPIRED_OLD_COUNTED": (False, 1),  # counted once: never deleted
    }
    assert steps["by_tier"]["ai"] == {"codes": 3, "active": 1, "expired": 1, "used_up": 1,
                                      "uses": 3}
    assert steps["by_tier"]["premium"]["codes"] == 5
    assert steps["by_tier"]["free"]["codes"] == 0


def test_second_run_changes_nothing(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    _run(engine, settings)
    before = _state(engine)
    steps = _run(engine, settings)
    assert {k: v for k, v in steps.items() if k not in ("retention_days", "by_tier")} == {
        "codes_deactivated": 0, "codes_deleted": 0, "used_counts_raised": 0,
    }
    assert _state(engine) == before


def test_dry_run_predicts_the_real_run(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    before = _state(engine)
    dry = _run(engine, settings, dry_run=True)
    assert _state(engine) == before
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(
            PromoCodeRedemption.__table__)) == 4
    real = _run(engine, settings)
    for step in ("codes_deactivated", "codes_deleted", "used_counts_raised"):
        assert dry[step] == real[step], step


def test_small_batches_give_the_same_result(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    steps = _run(engine, settings.model_copy(update={"batch_size": 1}))
    assert steps["codes_deactivated"] == 5
    assert steps["codes_deleted"] == 1
