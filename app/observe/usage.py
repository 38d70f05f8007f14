"""What a run cost: peak memory, CPU seconds, time in the database, outbound calls.

The runner opens a `Meter` around the job's attempts and stores `Meter.figures()` on the
run's log row (`resource_usage`); the dashboard charts it beside the duration and
`/metrics` sums it.  Everything here is cheap enough to run on every run:

1. Memory: `ru_maxrss`, the process's high-water mark, read at the start and at the end.
   `peak_memory_bytes` is the mark at the end (the run's own peak in a process that runs
   one job, as a Vercel function or the CLI does); `memory_growth_bytes` is how much the
   run raised it (in a long-lived server, a run that stays under an earlier peak shows 0;
   on Linux a process inherits the peak of the one that started it).
   tracemalloc would see the run's own allocations but slows every one of them.
2. CPU: process time, not the thread's, because jobs hand work to threads (Stripe reads,
   S3 copies).  In a server running other requests at the same time this is an upper bound.
3. Database: SQLAlchemy's cursor events on the run's engine add each statement's time to
   the meter current in the context that executes it (`instrument(engine)`, once).
4. Outbound calls: the Stripe gateway, the SMTP transport and S3 storage capture the meter
   when they are built, as they capture the time budget (app/core/budget.py), so the
   threads they use count into the same run; each HTTP request or SMTP transaction is one
   call, retries included.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from contextvars import ContextVar, Token
from enum import StrEnum
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


class Service(StrEnum):
    STRIPE = "stripe"
    SMTP = "smtp"
    STORAGE = "storage"


# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_QUERY_STARTED = "usage_query_started"

_current: ContextVar[Meter | None] = ContextVar("run_usage_meter", default=None)


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


class Meter:
    """The figures of one run, counted from any thread that captured it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: Token[Meter | None] | None = None
        self._started = False
        self._rss_before = self._rss_after = 0
        self._cpu_before = self._cpu_after = 0.0
        self.db_seconds = 0.0
        self.db_queries = 0
        self.calls = {service: 0 for service in Service}

    @staticmethod
    def current() -> Meter | None:
        return _current.get()

    def __enter__(self) -> Meter:
        self._started = True
        self._rss_before = _max_rss()
        self._cpu_before = time.process_time()
        self._token = _current.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._cpu_after = time.process_time()
        self._rss_after = _max_rss()
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    def count(self, service: Service) -> None:
        with self._lock:
            self.calls[service] += 1

    def add_query(self, seconds: float) -> None:
        with self._lock:
            self.db_seconds += seconds
            self.db_queries += 1

    def figures(self) -> dict[str, Any] | None:
        """JSON-ready figures for the log row; None when the meter never ran (the job was
        refused before its first attempt)."""
        if not self._started:
            return None
        with self._lock:
            return {
                "peak_memory_bytes": self._rss_after,
                "memory_growth_bytes": max(0, self._rss_after - self._rss_before),
                "cpu_seconds": round(max(0.0, self._cpu_after - self._cpu_before), 4),
                "db_seconds": round(self.db_seconds, 4),
                "db_queries": self.db_queries,
                "calls": {str(service): n for service, n in self.calls.items()},
            }


def count(service: Service, meter: Meter | None) -> None:
    """One outbound call to `service` by a client that captured `meter` (None: no run)."""
    if meter is not None:
        meter.count(service)


# --- database time ---------------------------------------------------------------------
def _before(conn: Any, _cursor: Any, _statement: Any, _parameters: Any, _context: Any,
            _executemany: bool) -> None:
    if _current.get() is not None:
        conn.info[_QUERY_STARTED] = time.perf_counter()


def _after(conn: Any, _cursor: Any, _statement: Any, _parameters: Any, _context: Any,
           _executemany: bool) -> None:
    started = conn.info.pop(_QUERY_STARTED, None)
    meter = _current.get()
    if started is not None and meter is not None:
        meter.add_query(time.perf_counter() - started)


def instrument(engine: Engine) -> None:
    """Attribute the time of statements run on `engine` to the current run (idempotent)."""
    if not event.contains(engine, "before_cursor_execute", _before):
        event.listen(engine, "before_cursor_execute", _before)
        event.listen(engine, "after_cursor_execute", _after)
