"""Where each job's duration is heading, against its time budget.

1. `durations` reads the last `HISTORY` successful real runs of every job: one windowed
   query, whatever the number of jobs.
2. `job_trends` fits each job's durations and projects them against its time budget
   (app/observe/projection.py): "at this growth (+5.0% a day), trip-reminders exceeds its
   300 s budget in about 3 weeks".  A job with too little history, or whose runs take well
   under a second (scheduler noise, far from any budget), projects nothing.
3. `/health` lists the trends that cross within `WARN_WITHIN` (or already have) as warnings,
   `/metrics` exposes growth and crossing per job, and the job's dashboard page draws the
   runs, the fitted line, its projection and the budget (`trend_chart`).

The budget is the job's max runtime: the runner stops retrying there and the lease expires,
so a run that needs longer is cut short or overlaps the next one.
"""

from __future__ import annotations

import datetime as dt
import statistics
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


def time_budget(spec: JobSpec) -> float:
    """Seconds a run of `spec` may take."""
    return spec.max_runtime.total_seconds()


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


def durations(engine: Engine, names: list[str], limit: int = HISTORY
              ) -> dict[str, list[Point]]:
    """Each job's last `limit` successful real runs as (start, seconds), oldest first."""
    rank = sa.func.row_number().over(partition_by=log_t.c.job_name,
                                     order_by=log_t.c.started_at.desc()).label("rank")
    ranked = (sa.select(log_t.c.job_name, log_t.c.started_at, log_t.c.ended_at, rank)
              .where(log_t.c.job_name.in_(names), log_t.c.status == RunStatus.SUCCESS,
                     log_t.c.dry_run.is_(False), log_t.c.ended_at.is_not(None))
              .subquery())
    query = (sa.select(ranked.c.job_name, ranked.c.started_at, ranked.c.ended_at)
             .where(ranked.c.rank <= limit)
             .order_by(ranked.c.job_name, ranked.c.started_at))
    out: dict[str, list[Point]] = {name: [] for name in names}
    with engine.connect() as conn:
        for row in conn.execute(query):
            seconds = (row.ended_at - row.started_at).total_seconds()
            out[row.job_name].append(Point(row.started_at, max(0.0, seconds)))
    return out


def trend_of(spec: JobSpec, points: list[Point], now: dt.datetime) -> JobTrend:
    budget = time_budget(spec)
    projection = None
    if points and statistics.median(p.value for p in points) >= NOISE_FLOOR_S:
        projection = project(points, budget, now, subject=spec.name,
                             limit_label=f"its {budget_label(budget)} budget",
                             warn_within=WARN_WITHIN)
    return JobTrend(spec.name, budget, tuple(points), projection)


def job_trends(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime
               ) -> dict[str, JobTrend]:
    """Every job's duration trend against its budget (two jobs or twenty: one read)."""
    history = durations(engine, list(jobs))
    return {name: trend_of(spec, history[name], now) for name, spec in jobs.items()}


def warnings(trends: dict[str, JobTrend]) -> list[str]:
    return [t.projection.sentence for t in trends.values() if t.warn and t.projection]


# --- the chart on a job's dashboard page ---------------------------------------------------
@dataclass(frozen=True)
class TrendChart:
    """SVG geometry: runs as dots, the fitted line, its projection dashed, the budget."""

    width: int
    height: int
    top: int
    bottom: int
    dots: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, title
    fitted: str = ""  # polyline points
    ahead: str = ""
    budget_y: float | None = None  # None: the budget is off the chart
    budget_label: str = ""
    crossing: tuple[float, float, str] | None = None
    max_label: str = ""


def trend_chart(trend: JobTrend, width: int = 600, height: int = 170) -> TrendChart | None:
    """None when the job has no projection to draw."""
    p = trend.projection
    if p is None or not trend.points:
        return None
    top, bottom, left, right = 22, 18, 6, 6
    plot_h, plot_w = height - top - bottom, width - left - right
    everything = [*trend.points, *p.fitted, *p.ahead]
    start, end = everything[0].at, max(q.at for q in everything)
    span = max((end - start).total_seconds(), 1.0)
    shows_budget = p.outlook is not Outlook.NONE
    highest = max([q.value for q in everything] + ([trend.budget_s] if shows_budget else []))
    highest = highest * 1.05 or 1.0

    def x(at: dt.datetime) -> float:
        return round(left + plot_w * (at - start).total_seconds() / span, 2)

    def y(value: float) -> float:
        return round(top + plot_h - plot_h * min(value, highest) / highest, 2)

    def line(points: tuple[Point, ...]) -> str:
        return " ".join(f"{x(q.at)},{y(q.value)}" for q in points)

    budget_y = y(trend.budget_s) if trend.budget_s <= highest else None
    crossing = None
    if p.crosses_at is not None and p.outlook is not Outlook.NONE:
        crossing = (x(min(p.crosses_at, end)), y(trend.budget_s),
                    f"crosses {p.crosses_at:%Y-%m-%d}")
    return TrendChart(
        width, height, top, bottom,
        dots=[(x(q.at), y(q.value), f"{q.at:%Y-%m-%d %H:%M} UTC · {q.value:.1f} s")
              for q in trend.points],
        fitted=line(p.fitted), ahead=line(p.ahead), budget_y=budget_y,
        budget_label=f"budget {budget_label(trend.budget_s)}", crossing=crossing,
        max_label=f"{highest:.1f} s",
    )
