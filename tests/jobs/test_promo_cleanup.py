"""promo-cleanup on both databases: deactivate, delete, raise counts, idempotent, dry run.

Codes and redemptions are written the way the app writes them (app/voyagesmart/sample_data.py): a
redemption grants the code's tier, inserts a redemption row, bumps `used_count` and adds a
`promo_code_redemption` history row; the row and the count may each be missing (the app
only logs their failure).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import registry
from app.core.runner import RunOutcome
from app.db import table_of
from app.models import CronArchivedRow, PromoCode, PromoCodeRedemption, SubscriptionHistory
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import JobRun

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
STEPS = ("used_counts_raised", "codes_deleted", "codes_deactivated", "used_counts_lowered",
         "archive_rows_purged")

codes_t = table_of(PromoCode)
redemptions_t = table_of(PromoCodeRedemption)
history_t = table_of(SubscriptionHistory)
archive_t = table_of(CronArchivedRow)


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


def _tables(engine: Engine) -> dict[str, dict[Any, tuple[Any, ...]]]:
    """Every row of the promo tables, whole, by id."""
    with engine.connect() as conn:
        return {t.name: {row.id: tuple(row) for row in conn.execute(sa.select(t))}
                for t in (codes_t, redemptions_t)}


@pytest.fixture(autouse=True)
def _always_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job itself, run after run: its precondition (which skips a run when nothing
    changed) is tested in tests/core/test_preconditions.py."""
    monkeypatch.setitem(registry.JOBS, "promo-cleanup",
                        dataclasses.replace(registry.JOBS["promo-cleanup"], precondition=None))


def _steps(outcome: RunOutcome) -> dict[str, Any]:
    return {**outcome.details["steps"], "by_tier": outcome.details["by_tier"]}


def _bulk_codes(engine: Engine, prefix: str, n: int, *, expires_at: dt.datetime | None,
                tier: str = "premium") -> None:
    """`n` codes as the admin route inserts them (`promo-codes-simple`), in one statement."""
    with engine.begin() as conn:
        conn.execute(codes_t.insert(), [
            {"id": uuid.uuid4(), "code": f"{prefix}{i:04d}", "tier": tier, "max_uses": None,
             "used_count": 0, "expires_at": expires_at, "is_active": True,
             "description": f"Codice promozionale per piano {tier}",
             "created_at": NOW - 365 * DAY, "updated_at": NOW - 365 * DAY}
            for i in range(n)])


def test_cleanup_fixes_every_kind_of_problem(engine: Engine, settings: Settings,
                                             run_job: JobRun) -> None:
    _seed(engine)
    steps = _steps(run_job("promo-cleanup", settings, at=NOW, expect="success"))
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
    assert steps["by_tier"]["premium"] == {"codes": 5, "active": 2, "expired": 2,
                                           "used_up": 1, "uses": 9}
    assert steps["by_tier"]["free"] == {"codes": 0, "active": 0, "expired": 0, "used_up": 0,
                                        "uses": 0}


def test_second_run_changes_nothing(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    _seed(engine)
    _steps(run_job("promo-cleanup", settings, at=NOW, expect="success"))
    before = _state(engine)
    steps = _steps(run_job("promo-cleanup", settings, at=NOW, expect="success"))
    assert {k: steps[k] for k in STEPS} == dict.fromkeys(STEPS, 0)
    assert _state(engine) == before


def test_small_batches_give_the_same_result(engine: Engine, settings: Settings,
                                            run_job: JobRun) -> None:
    _seed(engine)
    steps = _steps(run_job("promo-cleanup", settings.model_copy(update={"batch_size": 1}), at=NOW,
                           expect="success"))
    assert steps["codes_deactivated"] == 5
    assert steps["codes_deleted"] == 1


# --- a redeemed code never looks never-redeemed ------------------------------------------
@pytest.fixture
def redemptions_cascade(engine: Engine) -> Iterator[None]:
    """Production's `promo_code_redemptions` comes from no SQL file; if its `user_id`
    references `auth.users` ON DELETE CASCADE, as Supabase tables usually do, a deleted
    account takes its redemption rows along.  PostgreSQL gets that foreign key for the
    test; SQLite cannot reference the attached `auth` file, so there the rows stay."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE promo_code_redemptions ADD CONSTRAINT test_redemption_user "
            "FOREIGN KEY (user_id) REFERENCES auth.users (id) ON DELETE CASCADE")
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE promo_code_redemptions "
                                 "DROP CONSTRAINT test_redemption_user")


def test_codes_redeemed_by_deleted_accounts_or_with_purged_rows_are_never_deleted(
        engine: Engine, settings: Settings, redemptions_cascade: None, run_job: JobRun) -> None:
    app = AppWriter(engine)
    ids: dict[str, uuid.UUID] = {}
    for name in ("GONE_ACCOUNT", "ROWS_PURGED", "STRING_DETAILS", "NEVER"):
        ids[name] = app.promo_code(name, tier="premium", at=NOW - 400 * DAY,
                                   expires_at=NOW - 200 * DAY)
    leaver = app.sign_up("leaver@example.com", at=NOW - 400 * DAY)
    stayer = app.sign_up("stayer@example.com", at=NOW - 400 * DAY)
    # Each redemption's used_count RPC failed: the count stays 0.
    app.redeem(leaver, ids["GONE_ACCOUNT"], NOW - 300 * DAY, count_use=False)
    app.redeem(stayer, ids["ROWS_PURGED"], NOW - 300 * DAY, count_use=False)
    app.redeem(stayer, ids["STRING_DETAILS"], NOW - 300 * DAY, count_use=False)
    app.delete_account(leaver)
    with engine.begin() as conn:
        conn.execute(redemptions_t.delete().where(
            redemptions_t.c.promo_code_id.in_([ids["ROWS_PURGED"], ids["STRING_DETAILS"]])))
        # A client that stored the details JSON-encoded: a JSON string, not an object.
        conn.execute(history_t.update().where(
            history_t.c.event_type == "promo_code_redemption",
            history_t.c.user_id == stayer,
            sa.cast(history_t.c.details, sa.Text).like(f"%{ids['STRING_DETAILS']}%"),
        ).values(details=json.dumps({"promo_code": "STRING_DETAILS",
                                     "promo_code_id": str(ids["STRING_DETAILS"])})))

    steps = _steps(run_job("promo-cleanup", settings, at=NOW, expect="success"))

    assert steps["codes_deleted"] == 1
    assert set(_state(engine)) == {"GONE_ACCOUNT", "ROWS_PURGED", "STRING_DETAILS"}
    assert _steps(run_job("promo-cleanup", settings, at=NOW,
                          expect="success"))["codes_deleted"] == 0


def test_exhausted_and_admin_seeded_counts_are_never_lowered(engine: Engine,
                                                            settings: Settings,
                                                            run_job: JobRun) -> None:
    app = AppWriter(engine)
    users = [app.sign_up(f"u{i}@example.com", at=NOW - 400 * DAY) for i in range(4)]
    closed = app.promo_code("CLOSED", tier="ai", at=NOW - 100 * DAY, max_uses=10,
                            used_count=10, is_active=False, expires_at=NOW + 30 * DAY)
    still_open = app.promo_code("OPEN_BUT_USED_UP", tier="ai", at=NOW - 100 * DAY,
                                max_uses=10, used_count=10, expires_at=NOW + 30 * DAY)
    app.promo_code("SEEDED", tier="premium", at=NOW - 100 * DAY, max_uses=50, used_count=40,
                   expires_at=NOW + 30 * DAY)
    for user in users[:3]:  # the other seven rows were purged
        app.redeem(user, closed, NOW - 10 * DAY, count_use=False)
    for user in users[:2]:
        app.redeem(user, still_open, NOW - 10 * DAY, count_use=False)

    for _ in range(2):
        steps = _steps(run_job("promo-cleanup", settings, at=NOW, expect="success"))
        assert steps["used_counts_lowered"] == 0
        assert _state(engine) == {"CLOSED": (False, 10), "OPEN_BUT_USED_UP": (False, 10),
                                  "SEEDED": (True, 40)}


def _lowering_data(engine: Engine) -> dict[str, uuid.UUID]:
    app = AppWriter(engine)
    users = [app.sign_up(f"u{i}@example.com", at=NOW - 400 * DAY) for i in range(4)]
    ids = {
        "SEEDED": app.promo_code("SEEDED", tier="premium", at=NOW - 100 * DAY, max_uses=50,
                                 used_count=40, expires_at=NOW + 30 * DAY),
        "USED_UP": app.promo_code("USED_UP", tier="ai", at=NOW - 100 * DAY, max_uses=10,
                                  used_count=10, expires_at=NOW + 30 * DAY),
        "COUNTED_NO_ROWS": app.promo_code("COUNTED_NO_ROWS", tier="ai", at=NOW - 100 * DAY,
                                          used_count=5, expires_at=NOW - 200 * DAY),
        "EXACT": app.promo_code("EXACT", tier="premium", at=NOW - 100 * DAY, used_count=0,
                                expires_at=NOW + 30 * DAY),
    }
    for user in users[:3]:
        app.redeem(user, ids["SEEDED"], NOW - 10 * DAY, count_use=False)
    for user in users:
        app.redeem(user, ids["USED_UP"], NOW - 10 * DAY, count_use=False)
    app.redeem(users[0], ids["EXACT"], NOW - 10 * DAY)
    return ids


def test_complete_rows_lower_counts_but_never_reopen_or_unredeem_a_code(
        engine: Engine, settings: Settings, run_job: JobRun) -> None:
    ids = _lowering_data(engine)
    complete = settings.model_copy(update={"promo_redemption_rows_complete": True})
    outcome = run_job("promo-cleanup", complete, at=NOW)
    assert outcome.status == "success", outcome.message
    assert outcome.details["steps"]["used_counts_lowered"] == 2
    assert outcome.details["samples"]["used_counts_lowered"] == sorted(
        str(ids[name]) for name in ("SEEDED", "USED_UP"))
    assert outcome.details["counted_without_rows"] == 1
    assert outcome.details["brakes"]["lower"]["affected"] == 2
    assert _state(engine) == {
        "SEEDED": (True, 3),          # lowered to its rows
        "USED_UP": (False, 4),        # was used up: closed first, stays closed
        "COUNTED_NO_ROWS": (False, 5),  # no row to lower to: a counted code stays counted
        "EXACT": (True, 1),
    }
    assert "lowered" in outcome.message


def test_lowering_has_its_own_brake(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    _lowering_data(engine)
    before = _tables(engine)
    braked = settings.model_copy(update={"promo_redemption_rows_complete": True,
                                         "promo_cleanup_lower_brake_count": 1,
                                         "promo_cleanup_lower_brake_share": 0.25})
    for dry_run in (True, False):
        outcome = run_job("promo-cleanup", braked, at=NOW, dry_run=dry_run)
        assert outcome.status == "error" and outcome.attempts == 1
        assert outcome.message.startswith(
            "safety brake: would lower used_count of promo codes: 2 of 4 (50%)")
        assert "PROMO_CLEANUP_LOWER_BRAKE_SHARE/PROMO_CLEANUP_LOWER_BRAKE_COUNT" in (
            outcome.message)
    assert _tables(engine) == before


# --- brakes -------------------------------------------------------------------------------
def test_deletion_brake_stops_a_mass_deletion_and_changes_nothing(
        engine: Engine, settings: Settings, run_job: JobRun) -> None:
    ids = _seed(engine)
    _bulk_codes(engine, "CAMPAIGN", 150, expires_at=NOW - 200 * DAY)
    before = _tables(engine)
    for dry_run in (True, False):
        outcome = run_job("promo-cleanup", settings, at=NOW, dry_run=dry_run)
        assert outcome.status == "error" and outcome.attempts == 1
        assert outcome.message.startswith(
            "safety brake: would delete promo codes: 151 of 159 (95%), above 10% and above "
            "100; nothing was changed.")
        brake = outcome.details["brake"]
        assert brake["affected"] == 151 and brake["population"] == 159
        assert len(brake["samples"]) == 5
        assert all(uuid.UUID(sample) for sample in brake["samples"])
    # Nothing at all: not even the lagging count the first step would have raised.
    assert _tables(engine) == before

    forced = run_job("promo-cleanup", settings, at=NOW, force=True)
    assert forced.status == "success", forced.message
    assert forced.details["steps"]["codes_deleted"] == 151
    assert forced.details["brakes"]["delete"]["forced"] is True
    assert _state(engine)["LAGGING"] == (False, 2)
    assert ids["EXPIRED_OLD"] not in _tables(engine)["promo_codes"]


def test_deactivation_brake_stops_a_mass_deactivation(engine: Engine,
                                                      settings: Settings, run_job: JobRun) -> None:
    # The clock or the data says every code is over: most of the live codes would close.
    _bulk_codes(engine, "LIVE", 20, expires_at=NOW - DAY)
    _bulk_codes(engine, "LATER", 5, expires_at=NOW + 30 * DAY)
    before = _tables(engine)
    braked = settings.model_copy(update={"promo_cleanup_deactivate_brake_count": 10})
    outcome = run_job("promo-cleanup", braked, at=NOW)
    assert outcome.status == "error"
    assert outcome.message.startswith(
        "safety brake: would deactivate promo codes: 20 of 25 (80%), above 20% and above 10")
    assert "PROMO_CLEANUP_DEACTIVATE_BRAKE_SHARE" in outcome.message
    assert _tables(engine) == before
    assert run_job("promo-cleanup", settings, at=NOW).details["steps"]["codes_deactivated"] == 20


# --- the dry run ----------------------------------------------------------------------
@pytest.mark.parametrize("rows_complete", [False, True])
def test_dry_run_predicts_the_real_run_exactly(engine: Engine, settings: Settings,
                                               rows_complete: bool, run_job: JobRun) -> None:
    _seed(engine)
    _lowering_data_extra(engine)
    _bulk_codes(engine, "OLD", 7, expires_at=NOW - 300 * DAY, tier="ai")
    _bulk_codes(engine, "RECENT", 6, expires_at=NOW - 3 * DAY)
    _archived_rows(engine, [40, 35, 5])
    settings = settings.model_copy(update={"promo_redemption_rows_complete": rows_complete})
    before = _tables(engine)
    dry = run_job("promo-cleanup", settings, at=NOW, dry_run=True)
    assert dry.status == "success", dry.message
    assert _tables(engine) == before
    real = run_job("promo-cleanup", settings, at=NOW)
    assert real.status == "success", real.message
    for key in ("steps", "samples", "brakes", "by_tier", "counted_without_rows"):
        assert dry.details[key] == real.details[key], key
    assert dry.records_processed == real.records_processed
    assert real.details["steps"]["codes_deleted"] == 8
    assert real.details["steps"]["archive_rows_purged"] == 2
    assert len(real.details["samples"]["codes_deleted"]) == 5
    assert (real.details["steps"]["used_counts_lowered"] > 0) is rows_complete


def _lowering_data_extra(engine: Engine) -> None:
    app = AppWriter(engine)
    users = [app.sign_up(f"x{i}@example.com", at=NOW - 400 * DAY) for i in range(3)]
    seeded = app.promo_code("SEEDED", tier="premium", at=NOW - 100 * DAY, max_uses=50,
                            used_count=40, expires_at=NOW + 30 * DAY)
    used_up = app.promo_code("USED_UP", tier="ai", at=NOW - 100 * DAY, max_uses=3,
                             used_count=3, expires_at=NOW + 30 * DAY)
    for user in users[:2]:
        app.redeem(user, seeded, NOW - 10 * DAY, count_use=False)
        app.redeem(user, used_up, NOW - 10 * DAY, count_use=False)


# --- the archive's retention ----------------------------------------------------------
def _archived_rows(engine: Engine, ages_days: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(archive_t.insert(), [
            {"run_id": uuid.uuid4(), "job_name": "storage-cleanup",
             "source_table": "promo_codes", "row_key": str(uuid.uuid4()),
             "row_data": {"id": str(uuid.uuid4())}, "archived_at": NOW - age * DAY}
            for age in ages_days])


def test_archive_is_purged_past_its_retention(engine: Engine, settings: Settings,
                                              run_job: JobRun) -> None:
    _archived_rows(engine, [31, 40, 29, 1])
    dry = run_job("promo-cleanup", settings, at=NOW, dry_run=True)
    assert dry.details["steps"]["archive_rows_purged"] == 2
    real = run_job("promo-cleanup", settings, at=NOW)
    assert real.details["steps"]["archive_rows_purged"] == 2
    assert real.details["archive_retention_days"] == 30
    with engine.connect() as conn:
        ages = sorted((NOW - row.archived_at).days
                      for row in conn.execute(sa.select(archive_t.c.archived_at)))
    assert ages == [1, 29]
    shorter = settings.model_copy(update={"archive_retention_days": 7})
    assert run_job("promo-cleanup", shorter, at=NOW).details["steps"]["archive_rows_purged"] == 1
