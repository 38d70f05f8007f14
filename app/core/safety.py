"""Brakes on destructive and mass steps: the one rule every delete, cancel and mass email obeys.

A job about to delete, cancel or email asks its brake first, with how many items the step
would touch and how many there are in all.  A brake is two settings:

- a share: the largest part of the population one run may touch;
- a count: the number of items a run may always touch, whatever the share.

The brake trips when the step would touch **more than the count and more than the share**:
a small table never trips on a handful of rows, and a large one trips when most of it would
go.  Past the brake the run changes nothing: `BrakeTripped` ends it as `error` (alerted, not
retried, the slot not done), with the figures, a few samples, and how to proceed (fix the
cause, or run again with `force`).

A dry run asks the same brake and trips the same way, so it predicts the real run exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import JobRefused

SAMPLES = 5  # items named in a tripped brake's details: enough to recognise the cause


class BrakeTripped(JobRefused):
    """A brake stopped a step: nothing was changed."""


@dataclass(frozen=True)
class Brake:
    """A limit on one step; `settings` names the variables an operator would change."""

    step: str  # what the step does to each item, e.g. "delete promo codes"
    share: float  # 0 < share <= 1
    count: int  # >= 0
    settings: tuple[str, str]  # (share variable, count variable)

    def allows(self, affected: int, population: int) -> bool:
        if affected <= self.count:
            return True
        return population > 0 and affected <= self.share * population

    def engage(self, *, affected: int, population: int, samples: Sequence[str] = (),
               force: bool = False) -> dict[str, Any]:
        """Figures of the step for the run's details; raises `BrakeTripped` past the brake
        unless `force` (an operator's deliberate override)."""
        figures: dict[str, Any] = {
            "step": self.step, "affected": affected, "population": population,
            "share_limit": self.share, "count_limit": self.count,
            "tripped": not self.allows(affected, population), "forced": False,
        }
        if not figures["tripped"]:
            return figures
        if force:
            figures["forced"] = True
            return figures
        share = affected / population if population else 1.0
        named = [str(sample)[:200] for sample in samples[:SAMPLES]]
        share_var, count_var = self.settings
        message = (
            f"safety brake: would {self.step}: {affected} of {population} ({share:.0%}), "
            f"above {self.share:.0%} and above {self.count}; nothing was changed. Fix the "
            f"cause, or raise {share_var}/{count_var}, or run again with force "
            "(--force, ?force=true) to proceed"
        )
        raise BrakeTripped(message, {"brake": {**figures, "samples": named}})
