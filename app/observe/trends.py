"""Where each job's duration is heading, against its time budget.

1. `durations` reads the last `HISTORY` successful real runs of every job: one windowed
   query, whatever the number of jobs.
2. `job_trends` fits each job's durations and projects them against its time budget
   (app/observe/projection.py): "at this growth (+5.0% a day), trip-reminders exceeds its
   300 s budget in about 3 weeks".  A job with too little history, or whose runs take well
   under a second (scheduler noise, far from any budget), projects nothing.
3. `/health` lists the trends that cross within `WARN_WITHIN` (or already have) as warnings,
   `/metrics` exposes growth and crossing per job, and the job's dashboard page draws the
   runs, the fitted line, its projection and the budget (`trend_chart`, which draws the
   volume trends of app/observe/volumes.py too).

The budget is the job's max runtime: the runner stops retrying there and the lease expires,
so a run that needs longer is cut short or overlaps the next one.  Where one invocation is
bounded (FUNCTION_MAX_DURATION, 300 s on Vercel), a job not made of chunks must finish
inside it, so that is its budget (`time_budget`).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.registry import JobSpec
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from app.observe.projection import Outlook, Point, Projection, project

log_t = table_of(CronJobLog)

HISTORY = 50  # runs per job: the fit is O(n^2) in it, and /health runs it for every job
WARN_WITHIN = dt.timedelta(days=30)
NOISE_FLOOR_S = 1.0  # a median below this is scheduler noise: no trend is projected
WARNED = (Outlook.SOON, Outlook.PAST)


def time_budget(spec: JobSpec, invocation_s: float | None = None) -> float:
    """Seconds a run of `spec` may take: its max runtime, or less when one invocation
    (FUNCTION_MAX_DURATION: a Vercel function's max duration) must hold the whole run.
    A run made of chunks (app/core/chunks.py) continues over several invocations, so its
    budget stays its max runtime."""
    seconds = spec.max_runtime.total_seconds()
    if invocation_s is None or spec.chunked:
        return seconds
    return min(seconds, invocation_s)


def budget_label(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 600 else f"{seconds / 60:g} min"


@dataclass(frozen=True)
class JobTrend:
    task: str
    budget_s: float
    points: tuple[Point, ...]  # the durations fitted, in seconds, oldest first
    projection: Projection | None

    @property
    def warn(self) -> bool:
        return self.projection is not None and self.projection.outlook in WARNED

    def chart(self) -> TrendChart | None:
        return trend_chart(self.points, self.projection,
                           limit_label=f"budget {budget_label(self.budget_s)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for /health's details and the dashboard."""
        p = self.projection
        return {
            "measure": "duration", "budget_seconds": self.budget_s, "runs": len(self.points),
            "outlook": str(p.outlook) if p else None,
            "growth_per_day": round(p.growth_per_day, 4) if p else None,
            "growth_per_run": round(p.growth_per_run, 4) if p else None,
            "crosses_at": p.crosses_at.isoformat() if p and p.crosses_at else None,
            "sentence": p.sentence if p else None,
        }


def successful_runs(engine: Engine, names: list[str], *columns: sa.ColumnElement[Any],
                    limit: int = HISTORY) -> dict[str, list[sa.Row[Any]]]:
    """Each job's last `limit` successful real runs, oldest first, as rows of start, end and
    `columns`: one windowed query, whatever the number of jobs (the volume trends of
    app/observe/volumes.py read the same runs)."""
    rank = sa.func.row_number().over(partition_by=log_t.c.job_name,
                                     order_by=log_t.c.started_at.desc()).label("rank")
    ranked = (sa.select(log_t.c.job_name, log_t.c.started_at, log_t.c.ended_at, *columns,
                        rank)
              .where(log_t.c.job_name.in_(names), log_t.c.status == RunStatus.SUCCESS,
                     log_t.c.dry_run.is_(False), log_t.c.ended_at.is_not(None))
              .subquery())
    query = (sa.select(*[c for c in ranked.c if c.name != "rank"])
             .where(ranked.c.rank <= limit)
             .order_by(ranked.c.job_name, ranked.c.started_at))
    out: dict[str, list[sa.Row[Any]]] = {name: [] for name in names}
    with engine.connect() as conn:
        for row in conn.execute(query):
            out[row.job_name].append(row)
    return out


def seconds_of(row: sa.Row[Any]) -> float:
    elapsed: dt.timedelta = row.ended_at - row.started_at
    return max(0.0, elapsed.total_seconds())


def durations(engine: Engine, names: list[str], limit: int = HISTORY
              ) -> dict[str, list[Point]]:
    """Each job's last `limit` successful real runs as (start, seconds), oldest first."""
    return {name: [Point(row.started_at, seconds_of(row)) for row in rows]
            for name, rows in successful_runs(engine, names, limit=limit).items()}


def trend_of(spec: JobSpec, points: list[Point], now: dt.datetime,
             invocation_s: float | None = None) -> JobTrend:
    budget = time_budget(spec, invocation_s)
    projection = None
    if points and statistics.median(p.value for p in points) >= NOISE_FLOOR_S:
        projection = project(points, budget, now, subject=spec.name,
                             limit_label=f"its {budget_label(budget)} budget",
                             warn_within=WARN_WITHIN)
    return JobTrend(spec.name, budget, tuple(points), projection)


def job_trends(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime,
               invocation_s: float | None = None) -> dict[str, JobTrend]:
    """Every job's duration trend against its budget (two jobs or twenty: one read);
    `invocation_s`: Settings.invocation_seconds."""
    history = durations(engine, list(jobs))
    return {name: trend_of(spec, history[name], now, invocation_s)
            for name, spec in jobs.items()}


def warnings(trends: dict[str, JobTrend]) -> list[str]:
    return [t.projection.sentence for t in trends.values() if t.warn and t.projection]


# --- the chart on a job's dashboard page ---------------------------------------------------
@dataclass(frozen=True)
class TrendChart:
    """SVG geometry: runs as dots, the fitted line, its projection dashed, the limit.

    One drawing for every projected measure: the duration against the budget here, a
    volume against what one run can handle (app/observe/volumes.py)."""

    width: int
    height: int
    top: int
    bottom: int
    dots: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, title
    fitted: str = ""  # polyline points
    ahead: str = ""
    limit_y: float | None = None  # None: the limit is off the chart
    limit_label: str = ""
    crossing: tuple[float, float, str] | None = None
    max_label: str = ""


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def trend_chart(points: Sequence[Point], p: Projection | None, *, limit_label: str,
                value_text: Callable[[float], str] = _seconds, width: int = 600,
                height: int = 170) -> TrendChart | None:
    """None when there is no projection to draw.  The limit (`p.limit`) is drawn, and the
    scale stretched to it, only when the trend heads for it."""
    if p is None or not points:
        return None
    top, bottom, left, right = 22, 18, 6, 6
    plot_h, plot_w = height - top - bottom, width - left - right
    everything = [*points, *p.fitted, *p.ahead]
    start, end = everything[0].at, max(q.at for q in everything)
    span = max((end - start).total_seconds(), 1.0)
    shows_limit = p.outlook is not Outlook.NONE
    highest = max([q.value for q in everything] + ([p.limit] if shows_limit else []))
    highest = highest * 1.05 or 1.0

    def x(at: dt.datetime) -> float:
        return round(left + plot_w * (at - start).total_seconds() / span, 2)

    def y(value: float) -> float:
        return round(top + plot_h - plot_h * min(value, highest) / highest, 2)

    def line(drawn: tuple[Point, ...]) -> str:
        return " ".join(f"{x(q.at)},{y(q.value)}" for q in drawn)

    crossing = None
    if p.crosses_at is not None and p.outlook is not Outlook.NONE:
        crossing = (x(min(p.crosses_at, end)), y(p.limit), f"crosses {p.crosses_at:%Y-%m-%d}")
    return TrendChart(
        width, height, top, bottom,
        dots=[(x(q.at), y(q.value), f"{q.at:%Y-%m-%d %H:%M} UTC · {value_text(q.value)}")
              for q in points],
        fitted=line(p.fitted), ahead=line(p.ahead),
        limit_y=y(p.limit) if p.limit <= highest else None, limit_label=limit_label,
        crossing=crossing, max_label=value_text(highest),
    )
