"""promo-cleanup on both databases: deactivate, delete, repair, idempotent, dry run."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import PromoCode, PromoCodeRedemption, User
from app.runner import Runner
from tests.conftest import FixedClock

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)


def _seed(engine: Engine) -> dict[str, uuid.UUID]:
    alive = User(id=uuid.uuid4(), email="alive@example.com", created_at=NOW)
    gone_user = uuid.uuid4()
    ids: dict[str, uuid.UUID] = {}

    def code(name: str, until_days: float | None, max_red: int | None, current: int,
             active: bool = True) -> PromoCode:
        promo = PromoCode(id=uuid.uuid4(), code=name, max_redemptions=max_red,
                          current_redemptions=current, active=active, created_at=NOW,
                          valid_until=None if until_days is None
                          else NOW + dt.timedelta(days=until_days))
        ids[name] = promo.id
        return promo

    with Session(engine) as s, s.begin():
        s.add(alive)
        s.add_all([
            code("VALID", 30, None, 0),
            code("NOEXPIRY", None, None, 0),
            code("EXPIRED_RECENT", -10, None, 0),            # deactivate, keep (< 90 days)
            code("EXPIRED_OLD", -200, None, 0),              # delete (never redeemed)
            code("EXPIRED_OLD_REDEEMED", -200, None, 1),     # deactivate, keep forever
            code("EXHAUSTED", 30, 1, 1),                     # deactivate
            code("DRIFTED", 30, 10, 7),                      # count repaired 7 -> 1
            code("ORPHANED", 30, 10, 2),                     # orphan redemption removed, 2 -> 1
        ])
        s.flush()
        s.add_all([
            PromoCodeRedemption(promo_code_id=ids["EXPIRED_OLD_REDEEMED"], user_id=alive.id,
                                redeemed_at=NOW - dt.timedelta(days=300)),
            PromoCodeRedemption(promo_code_id=ids["EXHAUSTED"], user_id=alive.id,
                                redeemed_at=NOW),
            PromoCodeRedemption(promo_code_id=ids["DRIFTED"], user_id=alive.id, redeemed_at=NOW),
            PromoCodeRedemption(promo_code_id=ids["ORPHANED"], user_id=alive.id, redeemed_at=NOW),
            PromoCodeRedemption(promo_code_id=ids["ORPHANED"], user_id=gone_user,
                                redeemed_at=NOW),
        ])
    return ids


def _state(engine: Engine) -> dict[str, tuple[bool, int]]:
    with engine.connect() as conn:
        return {
            row.code: (row.active, row.current_redemptions)
            for row in conn.execute(sa.select(PromoCode.__table__))
        }


def _run(engine: Engine, settings: Settings, *, dry_run: bool = False) -> dict[str, int]:
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    outcome = runner.run("promo-cleanup", trigger="cli", dry_run=dry_run)
    assert outcome.status == "success", outcome.message
    return outcome.details["steps"]


def test_cleanup_fixes_every_kind_of_problem(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    steps = _run(engine, settings)
    assert steps["codes_deactivated"] == 3
    assert steps["codes_deleted"] == 1
    assert steps["redemption_counts_repaired"] == 2
    assert steps["orphan_redemptions_removed"] == 1
    assert _state(engine) == {
        "VALID": (True, 0),
        "NOEXPIRY": (True, 0),
        "EXPIRED_RECENT": (False, 0),
        "EXPIRED_OLD_REDEEMED": (False, 1),
        "EXHAUSTED": (False, 1),
        "DRIFTED": (True, 1),
        "ORPHANED": (True, 1),
    }


def test_second_run_changes_nothing(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    _run(engine, settings)
    before = _state(engine)
    steps = _run(engine, settings)
    assert {k: v for k, v in steps.items() if k != "retention_days"} == {
        "codes_deactivated": 0, "codes_deleted": 0,
        "redemption_counts_repaired": 0, "orphan_redemptions_removed": 0,
    }
    assert _state(engine) == before


def test_dry_run_reports_and_changes_nothing(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    before = _state(engine)
    steps = _run(engine, settings, dry_run=True)
    assert steps["codes_deleted"] == 1
    assert steps["orphan_redemptions_removed"] == 1
    assert steps["redemption_counts_repaired"] == 2
    assert _state(engine) == before
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(
            PromoCodeRedemption.__table__)) == 5


def test_small_batches_give_the_same_result(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    steps = _run(engine, settings.model_copy(update={"batch_size": 1}))
    assert steps["codes_deactivated"] == 3
    assert steps["codes_deleted"] == 1
