"""Where each job's measured volume is heading, against what one run can handle.

A job that can measure the size of its work writes it in its run's details (`cron_job_log.
details`) under `volume`:

    {"measure": "objects_scanned", "value": 41250}                      storage-cleanup
    {"measure": "planned_messages", "value": 830}                       trip-reminders
    {"measure": "planned_messages", "value": 120,                       user-engagement
     "ceiling": 250, "ceiling_label": "its send brake"}

1. `job_volumes` reads the same runs as the duration trend (app/observe/trends.py: the last
   `HISTORY` successful real runs, one windowed query), fits the job's latest measure
   over them and projects it against the job's limit (app/observe/projection.py owns the
   math): "at this growth (+2.0% a day), storage-cleanup's scan exceeds the 41,300 objects
   it can scan in its 60 min budget in about 5 weeks".
2. `/health` lists the volumes that cross within `WARN_WITHIN` (or already have) as
   warnings, `/metrics` exposes each measure's latest value, limit, growth and crossing,
   and the job's dashboard page draws them with the duration chart's code.

The limit is the lower of two, each one a bound the growth really reaches:

- capacity: what one run gets through in its time budget at the pace its own runs show,
  the median over the fitted runs of volume per second of run, times the budget (the
  max runtime).  Past it the run is cut short at its budget: reminders go out late,
  storage is cleaned in pieces.  Runs taking under `NOISE_FLOOR_S` are mostly start-up,
  and their pace says nothing about a full budget: no capacity from them.
- a ceiling the job reports itself (`ceiling`, from its latest run): a setting that stops
  a run when the volume passes it whatever the history.  user-engagement's send brake
  trips above `USER_ENGAGEMENT_SEND_BRAKE_COUNT` and above `_SHARE` of all users, so its
  ceiling is the larger of the two; the user base it is a share of is held at the latest
  run's, which warns early, never late, while users grow too.
  Brakes the growth does not reach are left out: trip-reminders' share is a multiple of
  the usual volume of the last weeks, which rises with steady growth (it catches a jump,
  the anomaly check's business: app/observe/anomalies.py), and storage-cleanup's brake
  bounds what one run moves out of a bucket as a share of what it scanned.

A job with fewer than six runs reporting the measure projects nothing.  Pure apart from
the one read: `now` is passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from app.core.registry import JobSpec
from app.observe.projection import Point, Projection, project
from app.observe.trends import (
    NOISE_FLOOR_S,
    WARN_WITHIN,
    WARNED,
    TrendChart,
    budget_label,
    log_t,
    seconds_of,
    successful_runs,
    time_budget,
    trend_chart,
)


@dataclass(frozen=True)
class Measure:
    """How a measure reads in a sentence: "<task>'s <noun> exceeds the N <unit> it can
    <verb> in its budget"."""

    noun: str
    unit: str
    verb: str


MEASURES = {
    "objects_scanned": Measure("scan", "objects", "scan"),
    "planned_messages": Measure("send list", "messages", "send"),
}


def measure_of(key: str) -> Measure:
    return MEASURES.get(key, Measure(key.replace("_", " "), "items", "handle"))


@dataclass(frozen=True)
class JobVolume:
    task: str
    measure: str
    points: tuple[Point, ...]  # the measure of each run fitted, oldest first
    budget_s: float
    capacity: float | None  # what one run handles in its budget at its measured pace
    ceiling: float | None  # a limit the job reports (its latest run's)
    ceiling_label: str
    projection: Projection | None

    @property
    def limit(self) -> float | None:
        known = [v for v in (self.capacity, self.ceiling) if v is not None and v > 0]
        return min(known) if known else None

    @property
    def limit_by(self) -> str | None:
        """"capacity" or "ceiling": which limit the projection is against."""
        if self.limit is None:
            return None
        return "ceiling" if self.limit == self.ceiling else "capacity"

    @property
    def latest(self) -> float | None:
        return self.points[-1].value if self.points else None

    @property
    def warn(self) -> bool:
        return self.projection is not None and self.projection.outlook in WARNED

    @property
    def limit_text(self) -> str:
        """The limit as the sentence and the chart name it."""
        m = measure_of(self.measure)
        if self.limit is None:
            return ""
        if self.limit_by == "ceiling":
            return f"{self.ceiling_label} of {self.limit:,.0f} {m.unit}"
        return (f"the {self.limit:,.0f} {m.unit} it can {m.verb} in its "
                f"{budget_label(self.budget_s)} budget")

    def chart(self) -> TrendChart | None:
        unit = measure_of(self.measure).unit
        return trend_chart(self.points, self.projection,
                           limit_label=f"limit {self.limit or 0:,.0f} {unit}",
                           value_text=lambda v: f"{v:,.0f} {unit}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for /health's details."""
        p = self.projection
        return {
            "measure": self.measure, "latest": self.latest, "runs": len(self.points),
            "limit": round(self.limit, 1) if self.limit is not None else None,
            "limit_by": self.limit_by,
            "capacity": round(self.capacity, 1) if self.capacity is not None else None,
            "ceiling": self.ceiling,
            "outlook": str(p.outlook) if p else None,
            "growth_per_day": round(p.growth_per_day, 4) if p else None,
            "growth_per_run": round(p.growth_per_run, 4) if p else None,
            "crosses_at": p.crosses_at.isoformat() if p and p.crosses_at else None,
            "sentence": p.sentence if p else None,
        }


def _possessive(task: str) -> str:
    return f"{task}'" if task.endswith("s") else f"{task}'s"


def _reported(volume: Any) -> tuple[str, float, Any] | None:
    """(measure, value, the whole entry) of a run's `volume` detail, if it holds one."""
    if not isinstance(volume, dict):
        return None
    measure, value = volume.get("measure"), volume.get("value")
    if not isinstance(measure, str) or isinstance(value, bool) or not isinstance(
            value, int | float):
        return None
    return measure, float(value), volume


def volume_of(spec: JobSpec, rows: list[Any], now: dt.datetime,
              invocation_s: float | None = None) -> JobVolume | None:
    """The job's latest measure fitted over `rows` (start, end, volume); None when its runs
    measure nothing."""
    runs = [(row, seen) for row in rows if (seen := _reported(row.volume)) is not None]
    if not runs:
        return None
    measure, _, latest = runs[-1][1]
    runs = [(row, seen) for row, seen in runs if seen[0] == measure]
    points = tuple(Point(row.started_at, value) for row, (_, value, _) in runs)
    budget = time_budget(spec, invocation_s)
    seconds = [seconds_of(row) for row, _ in runs]
    capacity = None
    if statistics.median(seconds) >= NOISE_FLOOR_S:
        paces = [p.value / s for p, s in zip(points, seconds, strict=True)
                 if s > 0 and p.value > 0]
        capacity = statistics.median(paces) * budget if paces else None
    ceiling = latest.get("ceiling")
    found = JobVolume(
        task=spec.name, measure=measure, points=points, budget_s=budget,
        capacity=capacity,
        ceiling=float(ceiling) if isinstance(ceiling, int | float) and ceiling > 0 else None,
        ceiling_label=str(latest.get("ceiling_label") or "its ceiling"), projection=None)
    if found.limit is None:
        return found
    projection = project(points, found.limit, now,
                         subject=f"{_possessive(spec.name)} {measure_of(measure).noun}",
                         limit_label=found.limit_text, warn_within=WARN_WITHIN)
    return dataclasses.replace(found, projection=projection)


def job_volumes(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime,
                invocation_s: float | None = None) -> dict[str, JobVolume]:
    """Every job that measures a volume, with its projection (one read for all jobs)."""
    history = successful_runs(engine, list(jobs), log_t.c.details["volume"].label("volume"))
    found = {name: volume_of(spec, history[name], now, invocation_s)
             for name, spec in jobs.items()}
    return {name: volume for name, volume in found.items() if volume is not None}


def warnings(volumes: dict[str, JobVolume]) -> list[str]:
    return [v.projection.sentence for v in volumes.values() if v.warn and v.projection]
