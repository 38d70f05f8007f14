"""How long outbound calls may still take: the time budget every client reads.

A socket that accepts and never answers used to hold a run for minutes: each client had
its own timeout, multiplied by its own retries, and none knew how much of the run was left.
The runner now opens a budget around the job (its max runtime) and a short one around the
failure alerts (`ALERT_TIMEOUT`); the Stripe gateway, the mailer, object storage and the
webhook capture it when they are built (so the threads they use share it) and cap every
socket timeout by what is left, and stop retrying once it is spent.

1. `limited(seconds)` opens a budget for the calls made inside it (a nested one only ever
   shrinks it).
2. `Budget.current()` is what a client captures; `timeout(default)` is the socket timeout
   for the next call: `default`, or less when less is left.
3. A call started with nothing left raises `BudgetSpent`, a `TimeoutError`: transient to
   the runner, whose own retries stop at the same budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import tenacity

# The smallest timeout handed to a socket: below it a healthy server could not answer.
MIN_TIMEOUT = 0.5

_deadline: ContextVar[float | None] = ContextVar("outbound_deadline", default=None)


class BudgetSpent(TimeoutError):
    """The run's (or the alerts') time budget is spent: no new outbound call starts."""


@contextmanager
def limited(seconds: float) -> Iterator[None]:
    """Outbound calls made inside must end within `seconds` from now."""
    deadline = time.monotonic() + max(0.0, seconds)
    current = _deadline.get()
    token = _deadline.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True)
class Budget:
    deadline: float | None = None  # time.monotonic(); None: unbounded

    @classmethod
    def current(cls) -> Budget:
        return cls(_deadline.get())

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

    def check(self, what: str) -> None:
        if self.spent:
            raise BudgetSpent(f"time budget spent before {what}")

    def timeout(self, default: float) -> float:
        """The socket timeout for a call starting now (raises BudgetSpent when none is left)."""
        left = self.left()
        if left is None:
            return default
        if left <= 0:
            raise BudgetSpent("time budget spent")
        return max(MIN_TIMEOUT, min(default, left))

    def stop(self) -> tenacity.stop.stop_base:
        """A tenacity stop condition: no retry whose wait would end past the budget."""
        budget = self

        class _Stop(tenacity.stop.stop_base):
            def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
                left = budget.left()
                if left is None:
                    return False
                wait = retry_state.upcoming_sleep or 0.0
                return left - wait <= MIN_TIMEOUT

        return _Stop()
