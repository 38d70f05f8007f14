"""Anomalous runs: a robust baseline over recent successful runs, and the marks a run earns."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from app.observe.anomalies import (
    Kind,
    Measure,
    Rules,
    Sample,
    assess,
    baseline,
    judge,
)

T0 = dt.datetime(2026, 3, 1, 3, 0, tzinfo=dt.UTC)


def _history(durations: list[float], records: list[int]) -> list[Sample]:
    """Daily runs, oldest first, ending the day before `_next(len)`."""
    return [Sample(T0 + dt.timedelta(days=i), d, r)
            for i, (d, r) in enumerate(zip(durations, records, strict=True))]


def _next(history: list[Sample], duration_ms: float, records: int) -> Sample:
    return Sample(history[-1].started_at + dt.timedelta(days=1), duration_ms, records)


@pytest.fixture
def usual() -> list[Sample]:
    """20 runs of about 40 s processing about 4,000 records, with realistic jitter."""
    rng = random.Random(16)
    return _history([40_000 * rng.uniform(0.85, 1.2) for _ in range(20)],
                    [int(4000 * rng.uniform(0.9, 1.1)) for _ in range(20)])


def test_a_run_ten_times_slower_is_flagged_with_its_figures(usual: list[Sample]) -> None:
    base = baseline(usual)
    assert base is not None
    run = _next(usual, 10 * base.duration.median, 4000)
    [mark] = assess(run, usual)
    assert mark.kind is Kind.SLOW and mark.measure is Measure.DURATION
    assert mark.value == pytest.approx(10 * base.duration.median)
    assert mark.baseline == base.duration and mark.runs == 20
    assert mark.factor == pytest.approx(mark.value / base.duration.p95)
    assert 7 < mark.factor < 10
    assert mark.value > mark.threshold >= 2 * base.duration.p95
    assert mark.reason == (
        f"took {mark.value / 60_000:.1f} min, {mark.factor:.1f}x the 95th percentile "
        f"({base.duration.p95 / 1000:.1f} s) of the last 20 successful runs "
        f"(median {base.duration.median / 1000:.1f} s)")


def test_a_run_with_zero_records_is_flagged_with_its_figures(usual: list[Sample]) -> None:
    base = baseline(usual)
    assert base is not None
    [mark] = assess(_next(usual, base.duration.median, 0), usual)
    assert mark.kind is Kind.NO_RECORDS and mark.measure is Measure.RECORDS
    assert mark.value == 0 and mark.factor == 0
    assert mark.baseline.median == base.records.median
    assert 3600 <= mark.baseline.median <= 4400
    assert mark.reason == (f"processed 0 records; the last 20 successful runs processed a "
                           f"median of {base.records.median:,.0f}")


def test_a_slow_empty_run_earns_both_marks(usual: list[Sample]) -> None:
    marks = assess(_next(usual, 400_000, 0), usual)
    assert [m.kind for m in marks] == [Kind.SLOW, Kind.NO_RECORDS]


def test_ten_times_the_usual_volume_is_flagged(usual: list[Sample]) -> None:
    base = baseline(usual)
    assert base is not None
    [mark] = assess(_next(usual, 40_000, int(12 * base.records.median)), usual)
    assert mark.kind is Kind.HIGH_VOLUME
    assert mark.factor == pytest.approx(12, rel=0.01)
    assert "12.0x the median" in mark.reason
    # Eight times the volume is more, not "far above usual".
    assert assess(_next(usual, 40_000, int(8 * base.records.median)), usual) == []


def test_ordinary_runs_are_not_flagged(usual: list[Sample]) -> None:
    base = baseline(usual)
    assert base is not None
    for duration, records in [(base.duration.p95, 4400), (1.9 * base.duration.p95, 3000),
                              (5_000, 4000), (40_000, 1)]:
        assert assess(_next(usual, duration, records), usual) == [], (duration, records)


def test_three_runs_of_history_never_flag() -> None:
    short = _history([40_000, 41_000, 39_000], [4000, 4100, 3900])
    assert baseline(short) is None
    assert assess(_next(short, 4_000_000, 0), short) == []
    assert judge(_next(short, 4_000_000, 0), None) == []


def test_five_runs_are_enough_and_only_the_last_twenty_count() -> None:
    five = _history([40_000] * 5, [4000] * 5)
    assert [m.kind for m in assess(_next(five, 400_000, 4000), five)] == [Kind.SLOW]
    # 30 old runs of 400 s, then 20 recent runs of 40 s: only the recent ones form the baseline.
    mixed = _history([400_000] * 30 + [40_000] * 20, [4000] * 50)
    base = baseline(mixed)
    assert base is not None and base.runs == 20 and base.duration.median == 40_000
    assert [m.kind for m in assess(_next(mixed, 400_000, 4000), mixed)] == [Kind.SLOW]


def test_the_run_itself_never_joins_its_baseline(usual: list[Sample]) -> None:
    run = _next(usual, 4_000_000, 4000)
    read_after_logging = [*usual, run]
    assert [m.kind for m in assess(run, read_after_logging)] == [Kind.SLOW]


def test_identical_runs_mad_zero_need_the_factor_too() -> None:
    same = _history([1000] * 20, [50] * 20)
    base = baseline(same)
    assert base is not None and base.duration.mad == 0 and base.records.mad == 0
    assert assess(_next(same, 1999, 50), same) == []  # one ms over the median is not news
    assert assess(_next(same, 1900, 499), same) == []
    [slow] = assess(_next(same, 2500, 50), same)
    assert slow.kind is Kind.SLOW and slow.threshold == 2000 and slow.factor == 2.5
    [volume] = assess(_next(same, 1000, 501), same)
    assert volume.kind is Kind.HIGH_VOLUME and volume.threshold == 500


def test_a_job_that_usually_finds_nothing_is_not_flagged_for_nothing() -> None:
    idle = _history([200] * 20, [0] * 20)
    base = baseline(idle)
    assert base is not None and base.zero_share == 1.0
    assert assess(_next(idle, 200, 0), idle) == []
    assert assess(_next(idle, 200, 100), idle) == []  # the absolute floor
    [mark] = assess(_next(idle, 200, 250), idle)
    assert mark.kind is Kind.HIGH_VOLUME and mark.factor == 250  # against a median floored at 1


def test_zero_records_is_normal_for_a_job_that_often_finds_nothing() -> None:
    often_idle = _history([1000] * 20, [0, 0, 0, 5000] * 5)
    assert assess(_next(often_idle, 1000, 0), often_idle) == []
    small = _history([1000] * 20, [3] * 20)  # usually a handful: zero is not remarkable
    assert assess(_next(small, 1000, 0), small) == []


def test_millisecond_durations_are_noise_below_the_absolute_floor() -> None:
    tiny = _history([4, 5, 6, 5, 4, 5, 7, 5, 5, 4], [10] * 10)
    assert assess(_next(tiny, 60, 10), tiny) == []  # 10x slower, 55 ms: noise
    assert assess(_next(tiny, 1004, 10), tiny) == []
    [mark] = assess(_next(tiny, 1500, 10), tiny)
    assert mark.kind is Kind.SLOW and mark.threshold == 1005
    assert mark.reason.startswith("took 1.5 s, ")
    all_zero = _history([0] * 10, [0] * 10)
    assert assess(_next(all_zero, 900, 0), all_zero) == []
    assert [m.kind for m in assess(_next(all_zero, 1200, 0), all_zero)] == [Kind.SLOW]


def test_one_outlier_in_the_history_does_not_hide_the_next() -> None:
    # A single 10-minute run in the baseline would lift mean + 3 sd past 4 minutes;
    # the median and p95 barely move.
    durations = [30_000.0] * 19 + [600_000.0]
    spiky = _history(durations, [100] * 20)
    base = baseline(spiky)
    assert base is not None and base.duration.median == 30_000
    mean, sd = (sum(durations) / 20,
                (sum((d - sum(durations) / 20) ** 2 for d in durations) / 19) ** 0.5)
    assert mean + 3 * sd > 250_000
    assert [m.kind for m in assess(_next(spiky, 250_000, 100), spiky)] == [Kind.SLOW]


def test_marks_are_json_ready_with_every_figure(usual: list[Sample]) -> None:
    [mark] = assess(_next(usual, 4_000_000, 4000), usual)
    body = json.loads(json.dumps(mark.as_dict()))
    assert body["kind"] == "slow" and body["measure"] == "duration"
    assert body["value"] == 4_000_000 and body["runs"] == 20
    assert set(body) == {"kind", "measure", "value", "median", "mad", "p95", "runs",
                         "threshold", "factor", "reason"}
    assert body["p95"] == mark.baseline.p95 and body["reason"] == mark.reason


def test_rules_are_configurable_and_checked() -> None:
    hist = _history([1000.0] * 3, [10] * 3)
    assert baseline(hist, Rules(min_runs=3, window=3)) is not None
    with pytest.raises(ValueError, match="min_runs"):
        Rules(min_runs=10, window=5)
