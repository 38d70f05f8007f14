"""Chart geometry of the dashboard: the trend line's hook, usage bars, the sparkline."""

from __future__ import annotations

import datetime as dt

from app.observe.dashboard_view import RunRow, Trend, chart, sparkline, summarize

T0 = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _run(i: int, seconds: float, status: str = "success", **extra: object) -> RunRow:
    started = T0 + i * DAY
    return RunRow(run_id=str(i), job_name="job", trigger="vercel", status=status,
                  started_at=started, ended_at=started + dt.timedelta(seconds=seconds),
                  message="", records_processed=0, attempts=1, dry_run=False,
                  error_details=None, **extra)  # type: ignore[arg-type]


def _points(polyline: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in polyline.split())]


def test_a_trend_is_drawn_through_the_runs_and_continues_past_the_last() -> None:
    runs = [_run(i, 10.0 * (i + 1)) for i in range(10)]  # 10 s .. 100 s, one a day
    fitted = [(r.started_at, r.duration_s or 0.0) for r in runs]
    ahead = [(runs[-1].started_at + k * DAY, 100.0 + 10 * k) for k in range(0, 4)]
    c = chart(runs, trend=Trend(fitted, ahead, "at this growth, job exceeds its budget"))
    assert c.trend_sentence == "at this growth, job exceeds its budget"
    line = _points(c.trend)
    # Each fitted point sits on the top of its run's bar.
    for (x, y), bar in zip(line, c.bars, strict=True):
        assert abs(x - (bar.x + bar.width / 2)) < 0.01
        assert abs(y - bar.y) < 0.01
    continued = _points(c.ahead)
    assert continued[0] == line[-1]
    slot = c.bars[1].x - c.bars[0].x
    # A day past the last run is one run's slot to the right; values past the scale clip.
    assert abs(continued[1][0] - (line[-1][0] + slot)) < 0.01
    assert all(y >= c.top for _x, y in continued) and continued[-1][1] == c.top


def test_without_a_trend_nothing_is_drawn() -> None:
    c = chart([_run(i, 5.0) for i in range(3)])
    assert c.trend == "" and c.ahead == "" and c.trend_sentence == ""


def test_usage_charts_leave_gaps_for_runs_that_recorded_nothing() -> None:
    runs = [_run(0, 5.0), _run(1, 5.0, usage={"cpu_seconds": 2.0, "calls": {"smtp": 3}}),
            _run(2, 5.0, usage={"cpu_seconds": 1.0, "calls": {"smtp": 1, "stripe": 1}})]
    cpu = chart(runs, value=lambda r: r.used("cpu_seconds"), measure="cpu", mark_peak=False)
    assert len(cpu.bars) == 2 and cpu.slowest is None
    assert cpu.bars[0].height == 2 * cpu.bars[1].height
    calls = chart(runs, value=lambda r: r.used("calls"), measure="calls", mark_peak=False)
    assert abs(calls.bars[0].height / calls.bars[1].height - 3 / 2) < 0.01  # 3 and 2 calls


def test_sparkline_puts_the_newest_run_at_the_right_edge() -> None:
    runs = [_run(0, 1.0), _run(1, 4.0), _run(2, 2.0, "error")]
    spark = sparkline(runs)
    assert [b.status for b in spark.bars] == ["success", "success", "error"]
    last = spark.bars[-1]
    assert abs(last.x + last.width - spark.width) < 1.5
    assert last.height == spark.height  # a failure stands at full height
    assert spark.bars[1].height > spark.bars[0].height
    assert sparkline([]).bars == []


def test_summary_of_no_jobs_is_all_zero() -> None:
    s = summarize([])
    assert (s.total, s.ok, s.failing, s.overdue, s.running, s.anomalous) == (0, 0, 0, 0, 0, 0)
