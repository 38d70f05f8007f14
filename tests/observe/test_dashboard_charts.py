"""Chart geometry of the dashboard: usage bars, the sparkline (the trend charts: test_trends.py)."""

from __future__ import annotations

import datetime as dt

from app.observe.dashboard_view import RunRow, chart, sparkline, summarize

T0 = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _run(i: int, seconds: float, status: str = "success", **extra: object) -> RunRow:
    started = T0 + i * DAY
    return RunRow(run_id=str(i), job_name="job", trigger="vercel", status=status,
                  started_at=started, ended_at=started + dt.timedelta(seconds=seconds),
                  message="", records_processed=0, attempts=1, dry_run=False,
                  error_details=None, **extra)  # type: ignore[arg-type]


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
