"""Is this run unlike the job's recent runs?  A robust baseline, and the marks a run earns.

A run is judged today only by how it ended.  A job that suddenly takes ten times longer, or
processes nothing where it usually processes thousands, ends `success` and looks healthy
until it fails.  This module compares one finished run with the job's recent successful runs
and says, with figures, what is unusual about it: the measure, the value, the baseline and
the factor.

Why median, MAD and the 95th percentile rather than mean and standard deviation: histories
are short (5 to 20 runs) and skewed (one slow run after a deploy, a month-end spike), and the
mean and the standard deviation are dragged by the very outliers this looks for.  Each rule
asks for two things at once, so that no single statistic decides alone:

- slow: above `slow_factor` x p95 AND above median + `mad_k` robust deviations;
- high volume: above `volume_factor` x median AND above median + `mad_k` robust deviations;
- zero records: the job usually processes at least `usual_records` and rarely nothing.

Degenerate spreads are handled on purpose.  MAD = 0 (identical runs) would make any change
"infinitely" unusual, so the factor rules carry the decision there.  A job that usually
processes nothing is never flagged for processing nothing, and its volume rule is bounded by
an absolute floor (`min_extra_records`).  Durations of a few milliseconds are mostly
scheduling noise, so a run must also be slower than the median by `min_slowdown_ms`.

A job with fewer than `min_runs` successful runs in its history is never flagged.  Pure
functions: the caller reads the runs and stores the marks.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# MAD x 1.4826 estimates the standard deviation of normally distributed data.
_MAD_TO_SIGMA = 1.4826


class Measure(StrEnum):
    DURATION = "duration"
    RECORDS = "records"


class Kind(StrEnum):
    SLOW = "slow"
    NO_RECORDS = "no_records"
    HIGH_VOLUME = "high_volume"


@dataclass(frozen=True)
class Sample:
    """One finished run, as the run log holds it."""

    started_at: dt.datetime
    duration_ms: float
    records: int


@dataclass(frozen=True)
class Rules:
    window: int = 20  # the most recent successful runs that form the baseline
    min_runs: int = 5  # fewer than this: never flagged
    slow_factor: float = 2.0  # x p95 of duration
    mad_k: float = 5.0  # robust deviations (MAD x 1.4826) above the median
    min_slowdown_ms: float = 1000.0  # below this, a slower run is noise
    volume_factor: float = 10.0  # x median of records
    min_extra_records: int = 100  # below this many extra records, a bigger run is noise
    usual_records: int = 10  # a median at least this high makes zero records unusual
    zero_share: float = 0.1  # at most this share of baseline runs may have processed zero

    def __post_init__(self) -> None:
        if self.min_runs < 2 or self.window < self.min_runs:
            raise ValueError("anomaly rules need 2 <= min_runs <= window")


RULES = Rules()


@dataclass(frozen=True)
class Spread:
    median: float
    mad: float  # median absolute deviation from the median
    p95: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        median = statistics.median(values)
        mad = statistics.median([abs(v - median) for v in values])
        # Linear interpolation between order statistics (numpy's default).
        p95 = statistics.quantiles(values, n=100, method="inclusive")[94]
        return cls(float(median), float(mad), float(p95))

    def above_median(self, k: float) -> float:
        return self.median + k * _MAD_TO_SIGMA * self.mad


@dataclass(frozen=True)
class Baseline:
    runs: int
    duration: Spread  # milliseconds
    records: Spread
    zero_share: float  # share of the baseline runs that processed no records


@dataclass(frozen=True)
class Mark:
    """One way in which a run is unusual, with the figures that say so."""

    kind: Kind
    measure: Measure
    value: float
    baseline: Spread
    runs: int  # size of the baseline
    threshold: float  # the value past which this kind is flagged
    factor: float  # value / p95 for slow, value / median otherwise (median floored at 1)

    @property
    def reason(self) -> str:
        b, of_runs = self.baseline, f"the last {self.runs} successful runs"
        if self.kind is Kind.SLOW:
            return (f"took {_ms(self.value)}, {self.factor:.1f}x the 95th percentile "
                    f"({_ms(b.p95)}) of {of_runs} (median {_ms(b.median)})")
        if self.kind is Kind.NO_RECORDS:
            return f"processed 0 records; {of_runs} processed a median of {b.median:,.0f}"
        return (f"processed {self.value:,.0f} records, {self.factor:.1f}x the median "
                f"({b.median:,.0f}) of {of_runs}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run's log row, /health, the dashboard and Sentry's context."""
        return {
            "kind": str(self.kind), "measure": str(self.measure), "value": self.value,
            "median": self.baseline.median, "mad": self.baseline.mad, "p95": self.baseline.p95,
            "runs": self.runs, "threshold": self.threshold, "factor": round(self.factor, 3),
            "reason": self.reason,
        }


def baseline(history: Iterable[Sample], rules: Rules = RULES) -> Baseline | None:
    """The baseline over the most recent `rules.window` runs of `history` (successful runs,
    in any order), or None when there are fewer than `rules.min_runs`."""
    recent = sorted(history, key=lambda s: s.started_at, reverse=True)[: rules.window]
    if len(recent) < rules.min_runs:
        return None
    records = [float(s.records) for s in recent]
    return Baseline(
        runs=len(recent),
        duration=Spread.of([s.duration_ms for s in recent]),
        records=Spread.of(records),
        zero_share=sum(1 for r in records if r == 0) / len(recent),
    )


def judge(run: Sample, base: Baseline | None, rules: Rules = RULES) -> list[Mark]:
    """The marks `run` earns against `base`: none when there is no baseline."""
    if base is None:
        return []
    marks: list[Mark] = []
    d = base.duration
    slow_at = max(rules.slow_factor * d.p95, d.above_median(rules.mad_k),
                  d.median + rules.min_slowdown_ms)
    if run.duration_ms > slow_at:
        marks.append(Mark(Kind.SLOW, Measure.DURATION, float(run.duration_ms), d, base.runs,
                          slow_at, run.duration_ms / max(d.p95, 1.0)))
    r = base.records
    if (run.records == 0 and r.median >= rules.usual_records
            and base.zero_share <= rules.zero_share):
        marks.append(Mark(Kind.NO_RECORDS, Measure.RECORDS, 0.0, r, base.runs, 0.0, 0.0))
    volume_at = max(rules.volume_factor * r.median, r.above_median(rules.mad_k),
                    r.median + rules.min_extra_records)
    if run.records > volume_at:
        marks.append(Mark(Kind.HIGH_VOLUME, Measure.RECORDS, float(run.records), r,
                          base.runs, volume_at, run.records / max(r.median, 1.0)))
    return marks


def assess(run: Sample, history: Iterable[Sample], rules: Rules = RULES) -> list[Mark]:
    """Judge `run` against the successful runs of `history` that started before it (so a
    history read after the run was logged never compares the run with itself)."""
    earlier = [s for s in history if s.started_at < run.started_at]
    return judge(run, baseline(earlier, rules), rules)


def _ms(value: float) -> str:
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 120_000:
        return f"{value / 1000:.1f} s"
    return f"{value / 60_000:.1f} min"
