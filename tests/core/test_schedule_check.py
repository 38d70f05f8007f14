"""Schedules that do not collide: real co-firing, scheduler rules, group budgets, stagger."""

from __future__ import annotations

import datetime as dt

import pytest

from app.core.registry import JOBS, tables_touched
from app.core.schedule_check import (
    EVERY_TABLE,
    Collision,
    Group,
    OverBudget,
    Planned,
    Rejected,
    TopOfHour,
    check,
    stagger,
    vercel_rejects,
)

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # a Thursday


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


# A registry made for the test: three seeded collisions, and three near misses.
MADE = {
    "nightly-orders": Planned("15 3 * * *", {"orders"}, 60),
    "weekly-orders": Planned("15 3 * * 1", {"orders", "users"}, 120),  # Mondays with nightly
    "monthly-users": Planned("30 4 1 * *", {"users"}, 60),
    "sunday-users": Planned("30 4 * * 0", {"users"}, 60),  # the 1st when it is a Sunday
    "vacuum": Planned("45 1 * * 0", {EVERY_TABLE}, 600),
    "file-sweep": Planned("45 1 * * 6,0", {"files"}, 60),  # Sundays, under the vacuum
    # Near misses: same minute with other tables; same time on other days; a minute apart.
    "invoices": Planned("15 3 * * *", {"invoices"}, 60),
    "monday-users": Planned("10 5 * * 1", {"users"}, 60),
    "tuesday-users": Planned("10 5 * * 2", {"users"}, 60),
    "late-orders": Planned("16 3 * * *", {"orders"}, 60),
}


def _pairs(collisions: tuple[Collision, ...]) -> set[frozenset[str]]:
    return {frozenset((c.first, c.second)) for c in collisions}


def test_each_seeded_collision_is_found_with_when_and_how_often() -> None:
    report = check(MADE, start=START)
    assert report.collisions == (
        Collision("nightly-orders", "weekly-orders", ("orders",), _at("2026-01-05T03:15"),
                  52, 366),
        Collision("monthly-users", "sunday-users", ("users",), _at("2026-02-01T04:30"), 3, 366),
        Collision("vacuum", "file-sweep", ("files",), _at("2026-01-04T01:45"), 52, 366),
    )
    assert report.collisions[1].message == (
        "monthly-users and sunday-users both fire at Sun 2026-02-01 04:30 UTC "
        "(3 times in 366 days) and touch users")


def test_every_table_against_every_table() -> None:
    report = check({"vacuum": Planned("45 1 * * 0", {EVERY_TABLE}, 600),
                    "reindex": Planned("45 1 * * *", {EVERY_TABLE}, 600)}, start=START)
    [collision] = report.collisions
    assert collision.tables == (EVERY_TABLE,)
    assert collision.message.endswith("and touch every table")


def test_schedules_at_the_top_of_the_hour_are_reported() -> None:
    report = check({"a": Planned("0 6 * * *", (), 1), "b": Planned("5 6 * * *", (), 1),
                    "c": Planned("0,30 * * * *", (), 1)}, start=START)
    assert report.top_of_hour == (TopOfHour("a", "0 6 * * *"), TopOfHour("c", "0,30 * * * *"))
    assert report.top_of_hour[0].message == (
        "a (0 6 * * *) fires at minute 0, where GitHub Actions delays and drops scheduled runs")
    assert check(MADE, start=START).top_of_hour == ()


@pytest.mark.parametrize(("schedule", "hobby", "reasons"), [
    ("15 3 * * 1", True, []),
    ("*/10 1-5/2 * 1,6 *", False, []),
    ("0 3 * * MON", False, ["uses names (MON, JAN); Vercel takes numbers only"]),
    ("0 3 1 JAN *", False, ["uses names (MON, JAN); Vercel takes numbers only"]),
    ("@daily", False, ["has 1 fields; Vercel takes five numeric ones"]),
    ("0 0 3 * * *", False, ["has 6 fields; Vercel takes five numeric ones"]),
    ("30 4 1 * 0", False,
     ["sets both day of month and day of week; Vercel takes one of them"]),
    ("5 1 ? * 1", False, ["field '?' is not numeric cron syntax"]),
    ("5 1 15W * *", False, ["field '15W' is not numeric cron syntax"]),
    ("5 1 L * *", False, ["field 'L' is not numeric cron syntax"]),
    ("61 1 * * *", False, ["is not a valid cron expression (Bad minute)"]),
    ("*/30 * * * *", False, []),
    ("*/30 * * * *", True, ["fires more than once a day, which Vercel Hobby refuses"]),
    ("5 1,13 * * *", True, ["fires more than once a day, which Vercel Hobby refuses"]),
])
def test_what_vercel_rejects(schedule: str, hobby: bool, reasons: list[str]) -> None:
    assert vercel_rejects(schedule, hobby=hobby) == reasons


def test_rejected_schedules_are_reported_and_skip_the_other_checks() -> None:
    jobs = {"names": Planned("0 3 * * MON", {"users"}, 1),
            "broken": Planned("61 3 * * *", {"users"}, 1),
            "often": Planned("*/30 * * * *", {"users"}, 1)}
    report = check(jobs, start=START, hobby=True)
    assert report.rejected == (
        Rejected("names", "0 3 * * MON", "uses names (MON, JAN); Vercel takes numbers only"),
        Rejected("broken", "61 3 * * *", "is not a valid cron expression (Bad minute)"),
        Rejected("often", "*/30 * * * *", "fires more than once a day, which Vercel Hobby "
                                          "refuses"),
    )
    # cronsim reads MON, so "names" and "often" still collide on Mondays at 03:00.
    assert _pairs(report.collisions) == {frozenset(("names", "often"))}


def test_a_group_past_the_function_limit() -> None:
    groups = {"weekly": Group("40 2 * * 0", ["vacuum", "weekly-orders"]),
              "daily": Group("20 2 * * *", ["nightly-orders", "invoices"])}
    report = check(MADE, groups, start=START, function_limit=300)
    assert report.over_budget == (OverBudget("weekly", 720, 300),)
    assert report.over_budget[0].message == (
        "group weekly: its members' budgets add up to 720 s, past the function's 300 s")
    assert check(MADE, groups, start=START, function_limit=800).over_budget == ()
    assert check(MADE, groups, start=START).over_budget == ()


def test_the_grouped_layout_is_checked_too() -> None:
    jobs = {"sync": Planned("5 2 * * *", {"subscriptions"}, 60),
            "promo": Planned("10 3 * * *", {"promo_codes"}, 60),
            "report": Planned("20 2 * * *", {"subscriptions", "reports"}, 60)}
    groups = {"daily": Group("20 2 * * *", ["sync", "promo"])}
    report = check(jobs, groups, start=START)
    # Alone, the jobs never meet; grouped, "daily" fires sync's work at report's minute.
    assert report.collisions == (
        Collision("daily", "report", ("subscriptions",), _at("2026-01-01T02:20"), 366, 366),)


def test_a_group_naming_an_unknown_job_is_refused() -> None:
    with pytest.raises(ValueError, match="group 'daily' names unknown jobs: nope"):
        check(MADE, {"daily": Group("20 2 * * *", ["invoices", "nope"])}, start=START)


def test_plain_tuples_work_as_registry_entries() -> None:
    report = check({"a": ("15 3 * * *", ["t"], 1), "b": ("15 3 * * 1", ["t"], 1)},  # type: ignore[dict-item]
                   {"g": ("20 3 * * *", ["a"])}, start=START)  # type: ignore[dict-item]
    assert _pairs(report.collisions) == {frozenset(("a", "b"))}


def _shipped() -> dict[str, Planned]:
    return {name: Planned(spec.schedule, tables_touched(spec), spec.max_runtime.total_seconds())
            for name, spec in JOBS.items()}


def test_only_db_maintenance_touches_every_table() -> None:
    assert [n for n, spec in JOBS.items() if EVERY_TABLE in tables_touched(spec)] == [
        "db-maintenance"]


def test_the_shipped_registry_reports_the_monday_0300_collision_and_stagger_clears_it() -> None:
    shipped = _shipped()
    report = check(shipped, start=START, hobby=True)
    [collision] = report.collisions
    assert (collision.first, collision.second) == ("promo-cleanup", "analytics")
    assert collision.tables == ("promo_code_redemptions", "subscription_history")
    assert collision.at == _at("2026-01-05T03:00") and collision.at.weekday() == 0
    assert "promo-cleanup and analytics both fire at Mon 2026-01-05 03:00 UTC" in (
        report.messages[0])
    # Every shipped schedule sits at minute 0; Vercel (even Hobby) takes them all.
    assert {t.name for t in report.top_of_hour} == set(JOBS)
    assert report.rejected == ()

    moved = stagger(shipped, start=START)
    assert {name: s for name, s in moved.items() if s != shipped[name].schedule} == {
        "analytics": "1 3 * * 1"}
    after = check({n: p._replace(schedule=moved[n]) for n, p in shipped.items()},
                  start=START, hobby=True)
    assert after.collisions == () and after.rejected == ()


def test_stagger_clears_every_seeded_collision_moving_as_little_as_possible() -> None:
    moved = stagger(MADE, start=START)
    assert moved == stagger(MADE, start=START)  # deterministic
    changed = {n: s for n, s in moved.items() if s != MADE[n].schedule}
    # The later of each colliding pair moves; weekly-orders skips 16 (late-orders, orders).
    assert changed == {"weekly-orders": "14 3 * * 1", "sunday-users": "31 4 * * 0",
                       "file-sweep": "46 1 * * 6,0"}
    after = check({n: p._replace(schedule=moved[n]) for n, p in MADE.items()}, start=START)
    assert after.collisions == ()


def test_stagger_never_lands_on_minute_zero_and_walks_past_taken_minutes() -> None:
    jobs = {"a": Planned("1 3 * * *", {"t"}, 1), "b": Planned("2 3 * * *", {"t"}, 1),
            "c": Planned("1 3 * * *", {"t"}, 1), "d": Planned("0 4 * * *", {"t"}, 1),
            "e": Planned("0 4 * * *", {"t"}, 1)}
    assert stagger(jobs, start=START) == {"a": "1 3 * * *", "b": "2 3 * * *",
                                          "c": "3 3 * * *", "d": "0 4 * * *",
                                          "e": "1 4 * * *"}
    # Off the hour for GitHub Actions: minute-0 schedules move too, never to 0.
    assert stagger(jobs, start=START, off_the_hour=True) == {
        "a": "1 3 * * *", "b": "2 3 * * *", "c": "3 3 * * *", "d": "1 4 * * *",
        "e": "2 4 * * *"}


def test_a_schedule_that_is_not_one_minute_is_left_for_a_person() -> None:
    jobs = {"steady": Planned("15 3 * * *", {"t"}, 1),
            "frequent": Planned("*/15 * * * *", {"t"}, 1)}
    moved = stagger(jobs, start=START)
    assert moved == {"steady": "15 3 * * *", "frequent": "*/15 * * * *"}
    after = check({n: p._replace(schedule=moved[n]) for n, p in jobs.items()}, start=START)
    assert _pairs(after.collisions) == {frozenset(("steady", "frequent"))}
    # Listed first, the frequent job keeps its time and the other one moves.
    first = {"frequent": jobs["frequent"], "steady": jobs["steady"]}
    assert stagger(first, start=START)["steady"] == "16 3 * * *"


def test_stagger_leaves_an_invalid_schedule_as_it_is() -> None:
    jobs = {"a": Planned("15 3 * * *", {"t"}, 1), "broken": Planned("61 3 * * *", {"t"}, 1),
            "b": Planned("15 3 * * *", {"t"}, 1)}
    groups = {"bad-group": Group("0 25 * * *", ["a"]), "g": Group("15 3 * * *", ["broken"])}
    assert stagger(jobs, groups, start=START) == {
        "a": "15 3 * * *", "broken": "61 3 * * *", "b": "16 3 * * *",
        "bad-group": "0 25 * * *", "g": "15 3 * * *"}


def test_stagger_moves_groups_clear_of_the_jobs_outside_them() -> None:
    jobs = {"sync": Planned("5 2 * * *", {"subscriptions"}, 60),
            "promo": Planned("10 3 * * *", {"promo_codes"}, 60),
            "report": Planned("20 2 * * *", {"subscriptions", "reports"}, 60)}
    groups = {"daily": Group("20 2 * * *", ["sync", "promo"])}
    moved = stagger(jobs, groups, start=START)
    assert moved == {"sync": "5 2 * * *", "promo": "10 3 * * *", "report": "20 2 * * *",
                     "daily": "21 2 * * *"}
    after = check({n: p._replace(schedule=moved[n]) for n, p in jobs.items()},
                  {n: g._replace(schedule=moved[n]) for n, g in groups.items()}, start=START)
    assert after.collisions == ()
