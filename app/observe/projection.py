"""Where is a job heading?  A trend fitted over its history, projected against a limit.

A job whose duration doubles every week looks healthy until the platform kills it at its
time budget (300 s on Vercel Hobby); a bucket or a planned-message queue growing toward a
job's limits is the same story.  This module fits a trend to any measured quantity of a
job (duration, objects scanned, messages planned) and says whether and when the trend
crosses the limit, in a sentence an operator reads ("at this growth (+5.0% a day),
trip-reminders exceeds its 300 s budget in about 3 weeks"), with the fitted line for a chart.

Why this fit:
- growth of this kind is multiplicative (a few percent per run), so the fit is a straight
  line through log(value) against time, and a crossing is where that line meets log(limit);
- the line is Theil-Sen (slope = median of the pairwise slopes, intercept = median
  residual): one slow run after a deploy barely moves it, where least squares would swing;
- a trend is believed only when the Mann-Kendall test (the rank test that goes with
  Theil-Sen) finds the series rising at `confidence_z` (one-sided 95% by default), so a
  flat, noisy series projects nothing rather than a crossing ten years out.

Both are O(n^2) in the number of points: pass a bounded history (the last 100 runs, say).
Non-positive values carry no multiplicative information and are left out.  A warning is
due only while there is still time to act: the crossing lies ahead of `now`, within
`warn_within`.  Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

_DAY = 86_400.0
_MAX_EXP = 700.0  # math.exp overflows a float a little past 709
_CHART_STEPS = 8


class Outlook(StrEnum):
    NONE = "none"  # flat, shrinking, no trend to speak of, or no crossing within 10 years
    LATER = "later"  # crosses, but beyond the warning horizon
    SOON = "soon"  # crosses within the warning horizon: warn
    PAST = "past"  # the fitted line is already at or above the limit


@dataclass(frozen=True)
class Point:
    at: dt.datetime
    value: float


@dataclass(frozen=True)
class Projection:
    outlook: Outlook
    limit: float
    growth_per_day: float  # fraction: 0.05 is +5% a day
    growth_per_run: float  # the same over the median interval between runs
    crosses_at: dt.datetime | None  # set for LATER, SOON and PAST
    sentence: str
    fitted: tuple[Point, ...]  # the trend at each point of the history used
    ahead: tuple[Point, ...]  # the trend from the last point to the crossing or the horizon
    points: int  # how many points the fit used

    @property
    def warn(self) -> bool:
        return self.outlook is Outlook.SOON


def project(history: Iterable[Point | tuple[dt.datetime, float]], limit: float,
            now: dt.datetime, *, subject: str, limit_label: str | None = None,
            warn_within: dt.timedelta = dt.timedelta(days=30), min_points: int = 6,
            confidence_z: float = 1.645,
            max_horizon: dt.timedelta = dt.timedelta(days=3650)) -> Projection | None:
    """Fit `history` (time, value) and project it against `limit` (same unit as the values).

    None when fewer than `min_points` positive values at distinct times exist: too little
    history projects nothing.  `limit_label` names the limit in the sentence (default
    "its limit of <limit>"), e.g. "its 300 s budget"."""
    if limit <= 0 or warn_within <= dt.timedelta(0):
        raise ValueError("a projection needs a positive limit and warning horizon")
    points = sorted((p if isinstance(p, Point) else Point(*p) for p in history),
                    key=lambda p: p.at)
    points = [p for p in points if p.value > 0]
    if len(points) < min_points or len({p.at for p in points}) < 2:
        return None
    t0 = points[0].at
    xs = [(p.at - t0).total_seconds() / _DAY for p in points]
    ys = [math.log(p.value) for p in points]
    slope = _theil_sen_slope(xs, ys)
    intercept = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
    gaps = [b - a for a, b in itertools.pairwise(xs) if b > a]

    def at(t: dt.datetime) -> float:
        return math.exp(min(intercept + slope * (t - t0).total_seconds() / _DAY, _MAX_EXP))

    label = limit_label or f"its limit of {limit:g}"
    growth = f"{math.expm1(slope):+.1%} a day"
    rising = _mann_kendall_z(ys) >= confidence_z and slope > 0
    crosses_at: dt.datetime | None = None
    if rising:
        days = (math.log(limit) - intercept) / slope
        if days * _DAY <= (now - t0).total_seconds() + max_horizon.total_seconds():
            crosses_at = t0 + dt.timedelta(days=days)
    if crosses_at is None:
        outlook = Outlook.NONE
        sentence = (f"{subject} is growing slowly ({growth}) but stays within {label} "
                    f"for years" if rising else f"{subject} shows no growth toward {label}")
    elif crosses_at <= now:
        outlook = Outlook.PAST
        sentence = f"at this growth ({growth}), {subject} is already past {label}"
    else:
        outlook = Outlook.SOON if crosses_at - now <= warn_within else Outlook.LATER
        sentence = (f"at this growth ({growth}), {subject} exceeds {label} in "
                    f"{_about(crosses_at - now)}")

    last = points[-1].at
    end = max(now, last) if outlook is Outlook.PAST else now + warn_within
    if outlook in (Outlook.SOON, Outlook.LATER) and crosses_at is not None:
        end = min(end, crosses_at)
    end = max(end, last)
    ahead = tuple(Point(t, at(t)) for t in (last + (end - last) * i / _CHART_STEPS
                                            for i in range(_CHART_STEPS + 1)))
    return Projection(
        outlook=outlook, limit=limit, growth_per_day=math.expm1(slope),
        growth_per_run=math.expm1(slope * statistics.median(gaps)) if gaps else 0.0,
        crosses_at=crosses_at, sentence=sentence,
        fitted=tuple(Point(p.at, at(p.at)) for p in points), ahead=ahead, points=len(points),
    )


def _theil_sen_slope(xs: list[float], ys: list[float]) -> float:
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] > xs[i]]
    return float(statistics.median(slopes))


def _mann_kendall_z(ys: list[float]) -> float:
    """The Mann-Kendall statistic, normalised (with the correction for tied values): large
    and positive when later values tend to exceed earlier ones."""
    n = len(ys)
    s = sum((ys[j] > ys[i]) - (ys[j] < ys[i]) for i in range(n) for j in range(i + 1, n))
    ties = sum(t * (t - 1) * (2 * t + 5) for t in Counter(ys).values())
    variance = (n * (n - 1) * (2 * n + 5) - ties) / 18
    if variance <= 0 or s == 0:
        return 0.0
    return (s - math.copysign(1, s)) / math.sqrt(variance)


def _about(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    for unit, size, below in (("minute", 1 / 60, 2), ("hour", 1, 48), ("day", 24, 14 * 24),
                              ("week", 24 * 7, 61 * 24), ("month", 24 * 30.44, 730 * 24)):
        if hours < below:
            return _plural(max(1, round(hours / size)), unit)
    return _plural(round(hours / (24 * 365.25)), "year")


def _plural(n: int, unit: str) -> str:
    return f"about {n} {unit}{'' if n == 1 else 's'}"
