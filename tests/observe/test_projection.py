"""Trouble foreseen: a robust trend over a job's history, projected against its limit."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest

from app.observe.projection import Outlook, Point, project

T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _series(first: float, growth: float, runs: int, every: dt.timedelta = DAY,
            noise: float = 0.0, seed: int = 0) -> list[Point]:
    rng = random.Random(seed)
    return [Point(T0 + i * every, first * (1 + growth) ** i * math.exp(rng.gauss(0, noise)))
            for i in range(runs)]


def _analytic(first: float, growth: float, limit: float, every: dt.timedelta = DAY
              ) -> dt.datetime:
    return T0 + every * (math.log(limit / first) / math.log(1 + growth))


def test_five_percent_a_run_projects_the_analytic_crossing() -> None:
    history = _series(30.0, 0.05, 20)
    now = history[-1].at + dt.timedelta(hours=1)
    result = project(history, 300.0, now, subject="trip-reminders",
                     limit_label="its 300 s budget")
    assert result is not None
    expected = _analytic(30.0, 0.05, 300.0)  # 47.2 runs after the first
    assert result.crosses_at is not None
    assert abs(result.crosses_at - expected) < dt.timedelta(minutes=1)
    assert result.growth_per_day == pytest.approx(0.05)
    assert result.growth_per_run == pytest.approx(0.05)
    assert result.outlook is Outlook.SOON and result.warn
    assert result.sentence == ("at this growth (+5.0% a day), trip-reminders exceeds its "
                               "300 s budget in about 4 weeks")


def test_the_sentence_of_the_issue() -> None:
    # The last run is 21 days of 5% growth short of 300 s.
    history = [Point(p.at, p.value * 300 / (1.05 ** 40)) for p in _series(1.0, 0.05, 20)]
    now = history[-1].at
    result = project(history, 300, now, subject="trip-reminders",
                     limit_label="its 300 s budget")
    assert result is not None and result.crosses_at is not None
    assert abs(result.crosses_at - (now + 21 * DAY)) < dt.timedelta(minutes=1)
    assert result.sentence.endswith("trip-reminders exceeds its 300 s budget in about 3 weeks")


def test_growth_per_run_and_per_day_differ_when_runs_are_not_daily() -> None:
    history = _series(10.0, 0.01, 40, every=dt.timedelta(hours=6))
    result = project(history, 1e6, history[-1].at, subject="x")
    assert result is not None
    assert result.growth_per_run == pytest.approx(0.01)
    assert result.growth_per_day == pytest.approx(1.01 ** 4 - 1)
    expected = _analytic(10.0, 0.01, 1e6, every=dt.timedelta(hours=6))
    assert result.crosses_at is not None
    assert abs(result.crosses_at - expected) < dt.timedelta(minutes=5)
    assert result.outlook is Outlook.LATER and not result.warn


def test_a_flat_series_projects_none() -> None:
    history = [Point(T0 + i * DAY, 120.0) for i in range(30)]
    result = project(history, 300, history[-1].at, subject="promo-cleanup",
                     limit_label="its 300 s budget")
    assert result is not None
    assert result.outlook is Outlook.NONE and result.crosses_at is None and not result.warn
    assert result.growth_per_day == 0
    assert result.sentence == "promo-cleanup shows no growth toward its 300 s budget"
    # The trend line is still drawn, flat.
    assert {round(p.value, 6) for p in result.fitted + result.ahead} == {120.0}


def test_a_shrinking_series_projects_none() -> None:
    history = _series(250.0, -0.03, 20)
    result = project(history, 300, history[-1].at, subject="x")
    assert result is not None and result.outlook is Outlook.NONE
    assert result.growth_per_day == pytest.approx(-0.03)


def test_flat_noisy_series_never_warn() -> None:
    warned = []
    for seed in range(50):
        history = _series(100.0, 0.0, 30, noise=0.15, seed=seed)
        result = project(history, 300, history[-1].at, subject="x")
        assert result is not None
        if result.warn:
            warned.append(seed)
    assert warned == []


def test_noisy_growth_projects_close_to_the_analytic_crossing() -> None:
    # Each run's duration varies by about 10% around the trend (lognormal noise).
    expected = _analytic(30.0, 0.05, 300.0)
    errors = []
    for seed in range(20):
        history = _series(30.0, 0.05, 30, noise=0.1, seed=seed)
        now = history[-1].at
        result = project(history, 300, now, subject="x")
        assert result is not None and result.crosses_at is not None
        assert result.outlook is Outlook.SOON, seed
        errors.append(abs(result.crosses_at - expected) / (expected - now))
    # Relative to the 18 days left until the analytic crossing.
    assert sorted(errors)[10] < 0.10 and max(errors) < 0.25, errors


def test_a_few_outliers_barely_move_the_crossing() -> None:
    history = _series(30.0, 0.05, 30)
    # Two runs hit by a slow dependency (five times their usual duration), one cut short.
    for i, factor in ((7, 5.0), (22, 5.0), (25, 0.2)):
        history[i] = Point(history[i].at, history[i].value * factor)
    now = history[-1].at
    result = project(history, 300, now, subject="x")
    assert result is not None and result.crosses_at is not None
    assert abs(result.crosses_at - _analytic(30.0, 0.05, 300.0)) < dt.timedelta(hours=12)


def test_warn_only_while_there_is_still_time_to_act() -> None:
    history = _series(30.0, 0.05, 20)
    crossing = _analytic(30.0, 0.05, 300.0)
    last = history[-1].at

    def outlook(now: dt.datetime, within: dt.timedelta) -> Outlook:
        result = project(history, 300, now, subject="x", warn_within=within)
        assert result is not None
        return result.outlook

    assert outlook(last, dt.timedelta(days=7)) is Outlook.LATER  # 28 days ahead
    assert outlook(crossing - 6 * DAY, dt.timedelta(days=7)) is Outlook.SOON
    assert outlook(crossing - 8 * DAY, dt.timedelta(days=7)) is Outlook.LATER
    assert outlook(last, dt.timedelta(days=30)) is Outlook.SOON
    past = project(history, 300, crossing + DAY, subject="x")
    assert past is not None and past.outlook is Outlook.PAST and not past.warn
    assert past.sentence == "at this growth (+5.0% a day), x is already past its limit of 300"


def test_too_little_history_projects_none() -> None:
    assert project(_series(30.0, 0.5, 5), 300, T0 + 10 * DAY, subject="x") is None
    # Non-positive values say nothing about multiplicative growth and are left out.
    zeros = [Point(T0 + i * DAY, 0.0) for i in range(10)] + _series(30.0, 0.5, 5)
    assert project(zeros, 300, T0 + 10 * DAY, subject="x") is None
    same_time = [Point(T0, 10.0 * i) for i in range(1, 10)]
    assert project(same_time, 300, T0, subject="x") is None
    assert project(_series(30.0, 0.5, 6), 300, T0 + 10 * DAY, subject="x") is not None


def test_other_quantities_and_plain_tuples() -> None:
    # Objects scanned by storage-cleanup, weekly, growing 20% a week, toward 1,000,000.
    history = [(T0 + i * dt.timedelta(weeks=1), 200_000 * 1.2 ** i) for i in range(8)]
    now = history[-1][0]
    result = project(history, 1_000_000, now, subject="storage-cleanup",
                     limit_label="its 1,000,000-object listing limit",
                     warn_within=dt.timedelta(days=60))
    assert result is not None and result.crosses_at is not None
    weeks = math.log(5) / math.log(1.2)  # 8.83 weeks after the first
    assert abs(result.crosses_at - (T0 + dt.timedelta(weeks=weeks))) < dt.timedelta(hours=1)
    assert result.growth_per_run == pytest.approx(0.2)
    assert result.sentence == ("at this growth (+2.6% a day), storage-cleanup exceeds its "
                               "1,000,000-object listing limit in about 13 days")


def test_the_chart_line_follows_the_fit_up_to_the_crossing() -> None:
    history = _series(30.0, 0.05, 20)
    now = history[-1].at
    result = project(history, 300, now, subject="x")
    assert result is not None and result.crosses_at is not None
    assert [p.at for p in result.fitted] == [p.at for p in history]
    for fitted, seen in zip(result.fitted, history, strict=True):
        assert fitted.value == pytest.approx(seen.value)
    assert result.ahead[0].at == now and result.ahead[-1].at == result.crosses_at
    assert result.ahead[-1].value == pytest.approx(300)
    assert [p.at for p in result.ahead] == sorted(p.at for p in result.ahead)
    # Beyond the horizon, the line stops at the horizon, below the limit.
    later = project(history, 300, now, subject="x", warn_within=dt.timedelta(days=7))
    assert later is not None
    assert later.ahead[-1].at == now + dt.timedelta(days=7) and later.ahead[-1].value < 300


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive limit"):
        project(_series(1.0, 0.1, 10), 0, T0, subject="x")
    with pytest.raises(ValueError, match="positive limit"):
        project(_series(1.0, 0.1, 10), 10, T0, subject="x", warn_within=dt.timedelta(0))
