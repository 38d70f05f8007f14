"""What the operators' dashboard shows: job overview, run history, charts, CSRF.

The overview is dense, the way healthchecks.io lists checks: a header counting jobs ok,
failing, overdue, running and anomalous, and one row per job with a sparkline of its last
runs (height: duration; colour: outcome) and a marker while an incident is open (the
alert state of app/observe/alerts.py: what kind, since when, last alert).  The full charts
live on each job's page: the duration of the last runs, and beside it what each run cost
(app/observe/usage.py): peak memory, CPU seconds, time in the database and outbound calls.
The trends projected from them are drawn by app/observe/trends.py.

Reads are set-based: the overview is the three grouped reads of `/health` plus one
windowed query for every job's last runs and one read of the incident states; a history
page is one page query and one count.  The charts are drawn here as SVG geometry (no
script, no CDN), so the page works under a Content-Security-Policy that allows no script
at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import health
from app.core.registry import JobSpec
from app.core.status import FAILED, LOGGED
from app.db import table_of
from app.models import CronJobLog
from app.observe import alerts
from app.observe.incidents import Condition, IncidentState

if TYPE_CHECKING:
    from app.queue.fleet import Fleet

log_t = table_of(CronJobLog)

CHART_RUNS = 50
SPARK_RUNS = 20
PAGE_SIZE = 25
STATUSES = LOGGED
CSRF_MAX_AGE = 8 * 3600

# --- CSRF ------------------------------------------------------------------------------
# HTTP Basic credentials are sent by the browser on any request to this origin, including
# a form another site submits; a token tied to the user and signed with a key derived from
# the dashboard password is what such a form cannot have.


def _csrf_key(password: str) -> bytes:
    return hashlib.sha256(b"voyagesmart-cron dashboard csrf\0" + password.encode()).digest()


def csrf_token(password: str, user: str, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    mac = hmac.new(_csrf_key(password), f"{user}\0{issued}".encode(), "sha256").hexdigest()
    return f"{issued}.{mac}"


def csrf_valid(password: str, user: str, token: str | None, now: float | None = None) -> bool:
    if not token or "." not in token:
        return False
    issued_text, _, mac = token.partition(".")
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    current = now if now is not None else time.time()
    expected = csrf_token(password, user, issued).partition(".")[2]
    fresh = 0 <= current - issued <= CSRF_MAX_AGE
    return hmac.compare_digest(mac.encode(), expected.encode()) and fresh


# --- runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    run_id: str
    job_name: str
    trigger: str
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    message: str
    records_processed: int
    attempts: int
    dry_run: bool
    error_details: str | None
    anomalies: tuple[dict[str, Any], ...] = ()  # marks (app/observe/run_marks.py)
    usage: dict[str, Any] | None = None  # app/observe/usage.py; None before it existed

    @property
    def anomalous(self) -> bool:
        return bool(self.anomalies)

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.started_at).total_seconds())

    def used(self, figure: str) -> float | None:
        """One figure of the run's resource usage (`calls` is their total)."""
        if not self.usage:
            return None
        value = self.usage.get(figure)
        if figure == "calls" and isinstance(value, dict):
            return float(sum(value.values()))
        return float(value) if isinstance(value, int | float) else None


# Marks written by the anomaly check (app/observe/anomalies.py) when the run log has them.
_RUN_COLUMNS = (log_t.c.run_id, log_t.c.job_name, log_t.c.trigger, log_t.c.status,
                log_t.c.started_at, log_t.c.ended_at, log_t.c.message,
                log_t.c.records_processed, log_t.c.attempts, log_t.c.dry_run,
                log_t.c.error_details, log_t.c.anomalies, log_t.c.resource_usage)


def _run_row(row: Any) -> RunRow:
    details = row.error_details
    return RunRow(
        run_id=str(row.run_id), job_name=row.job_name, trigger=row.trigger,
        status=row.status, started_at=row.started_at, ended_at=row.ended_at,
        message=row.message or "", records_processed=row.records_processed or 0,
        attempts=row.attempts or 0, dry_run=bool(row.dry_run),
        error_details=json.dumps(details, indent=2, sort_keys=True) if details else None,
        anomalies=tuple(row.anomalies or ()),
        usage=row.resource_usage or None,
    )


def recent_runs(engine: Engine, names: list[str], limit: int = CHART_RUNS
                ) -> dict[str, list[RunRow]]:
    """The last `limit` runs of every job, oldest first: one windowed query for all jobs."""
    rank = sa.func.row_number().over(partition_by=log_t.c.job_name,
                                     order_by=log_t.c.id.desc()).label("rank")
    ranked = sa.select(*_RUN_COLUMNS, log_t.c.id, rank).where(
        log_t.c.job_name.in_(names)).subquery()
    query = (sa.select(*[ranked.c[c.name] for c in _RUN_COLUMNS])
             .where(ranked.c.rank <= limit).order_by(ranked.c.job_name, ranked.c.id))
    out: dict[str, list[RunRow]] = {name: [] for name in names}
    with engine.connect() as conn:
        for row in conn.execute(query):
            out[row.job_name].append(_run_row(row))
    return out


@dataclass(frozen=True)
class HistoryPage:
    runs: list[RunRow]
    page: int
    pages: int
    total: int
    status: str | None


def history(engine: Engine, task: str, *, page: int = 1, status: str | None = None
            ) -> HistoryPage:
    condition = [log_t.c.job_name == task]
    if status:
        condition.append(log_t.c.status == status)
    with engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(log_t)
                                 .where(*condition)).scalar_one())
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(1, page), pages)
        rows = conn.execute(sa.select(*_RUN_COLUMNS).where(*condition)
                            .order_by(log_t.c.id.desc())
                            .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    return HistoryPage([_run_row(r) for r in rows], page, pages, total, status)


# --- overview --------------------------------------------------------------------------
@dataclass(frozen=True)
class JobView:
    spec: JobSpec
    health: health.JobHealth
    runs: list[RunRow]
    # The alert state (app/observe/alerts.py); None: never alerted, or unreadable.
    incident: IncidentState | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def incident_open(self) -> bool:
        """An alert went out for trouble that has not recovered yet."""
        return self.incident is not None and self.incident.condition is not Condition.HEALTHY

    @property
    def anomalous(self) -> bool:
        """Its latest finished real run carries anomaly marks."""
        last = next((r for r in reversed(self.runs)
                     if r.ended_at is not None and not r.dry_run), None)
        return last is not None and last.anomalous

    @cached_property
    def chart(self) -> Chart:
        return chart(self.runs)

    @cached_property
    def spark(self) -> Chart:
        return sparkline(self.runs[-SPARK_RUNS:])

    @cached_property
    def usage_charts(self) -> list[Chart]:
        return [chart(self.runs, value=measure.value, text=measure.text, label=measure.label,
                      measure=measure.key, mark_peak=False)
                for measure in USAGE_MEASURES]


@dataclass(frozen=True)
class Summary:
    """The counts above the jobs table.  A job may count twice (failing and overdue)."""

    total: int
    ok: int
    failing: int
    overdue: int
    running: int
    anomalous: int


def summarize(views: Sequence[JobView]) -> Summary:
    return Summary(
        total=len(views),
        ok=sum(v.health.ok for v in views),
        failing=sum(v.health.failing for v in views),
        overdue=sum(v.health.overdue for v in views),
        running=sum(v.health.facts.running_since is not None for v in views),
        anomalous=sum(v.anomalous for v in views),
    )


def overview(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime) -> list[JobView]:
    facts, baseline = health.read_facts(engine, jobs)
    results, _issues = health.evaluate(jobs, facts, now, baseline)
    runs = recent_runs(engine, list(jobs))
    stored = alerts.snapshot(engine, jobs) or {}  # None when unreadable: no incidents shown
    return [JobView(jobs[item.name], item, runs[item.name],
                    stored[item.name].state if item.name in stored else None)
            for item in results]


def fleet(engine: Engine, now: dt.datetime) -> Fleet | None:
    """The queue's workers and open runs' chunks (app/queue/fleet.py); None without a
    queue (SQLite, or not migrated)."""
    if engine.dialect.name != "postgresql":
        return None
    from app.queue import fleet as queue_fleet  # procrastinate only where a queue can be

    return queue_fleet.read(engine, now)


def job_view(engine: Engine, spec: JobSpec, now: dt.datetime) -> JobView:
    """One job for its page (its trends are drawn by app/observe/trends.py)."""
    return overview(engine, {spec.name: spec}, now)[0]


def age(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 600:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min"


def bytes_text(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def count_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def usage_text(run: RunRow) -> str:
    """One line of what the run cost, for the history table."""
    if not run.usage:
        return ""
    calls = run.usage.get("calls") or {}
    called = ", ".join(f"{service} {n}" for service, n in sorted(calls.items()) if n)
    return (f"cpu {seconds_text(run.used('cpu_seconds'))} · db "
            f"{seconds_text(run.used('db_seconds'))} ({count_text(run.used('db_queries'))} "
            f"queries) · peak {bytes_text(run.used('peak_memory_bytes'))}"
            f"{' · calls: ' + called if called else ''}")


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    value: Callable[[RunRow], float | None]
    text: Callable[[float | None], str]


USAGE_MEASURES = (
    Measure("peak_memory", "Peak memory", lambda r: r.used("peak_memory_bytes"), bytes_text),
    Measure("cpu", "CPU seconds", lambda r: r.used("cpu_seconds"), seconds_text),
    Measure("db", "Time in the database", lambda r: r.used("db_seconds"), seconds_text),
    Measure("calls", "Outbound calls (Stripe, SMTP, storage)", lambda r: r.used("calls"),
            count_text),
)


# --- chart -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    status: str
    failed: bool
    slowest: bool
    title: str
    anomalous: bool = False


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int
    bottom: int
    max_label: str
    bars: list[Bar] = field(default_factory=list)
    measure: str = "duration"
    label: str = "Duration"

    @property
    def slowest(self) -> Bar | None:
        return next((b for b in self.bars if b.slowest), None)

    @property
    def failed(self) -> list[Bar]:
        return [b for b in self.bars if b.failed]

    @property
    def empty(self) -> bool:
        return not self.bars


def _title(run: RunRow, text: str) -> str:
    return (f"{run.started_at:%Y-%m-%d %H:%M} UTC · {run.status}"
            f"{' (dry run)' if run.dry_run else ''} · {text}")


def chart(runs: list[RunRow], width: int = 600, height: int = 150, *,
          value: Callable[[RunRow], float | None] = lambda r: r.duration_s,
          text: Callable[[float | None], str] = seconds_text, label: str = "Duration",
          measure: str = "duration", mark_peak: bool = True) -> Chart:
    """Bars of one measure of the last runs, oldest left; failed runs marked, and the
    highest (the slowest, for durations) when `mark_peak`.  Runs without the measure (not
    finished, or logged before it was recorded) leave a gap."""
    top, bottom, left = 22, 18, 4
    plot_h = height - top - bottom
    values = [value(r) for r in runs]
    known = [v for v in values if v is not None]
    longest = max(known, default=0.0)
    scale = longest if longest > 0 else 1.0
    slot = (width - 2 * left) / CHART_RUNS
    peak_index = None
    if mark_peak and longest > 0:
        peak_index = max(range(len(runs)), key=lambda i: values[i] or -1.0)
    bars = []
    for index, (run, amount) in enumerate(zip(runs, values, strict=True)):
        if amount is None and measure != "duration":
            continue
        h = max(2.0, plot_h * (amount or 0.0) / scale)
        bars.append(Bar(
            x=round(left + index * slot + slot * 0.1, 2),
            y=round(top + plot_h - h, 2),
            width=round(slot * 0.8, 2),
            height=round(h, 2),
            status=run.status,
            failed=run.status in FAILED,
            slowest=index == peak_index,
            title=_title(run, text(amount)),
            anomalous=run.anomalous,
        ))
    return Chart(width, height, top, bottom, text(longest if known else None), bars,
                 measure=measure, label=label)


def sparkline(runs: list[RunRow], width: int = 122, height: int = 26) -> Chart:
    """The overview's per-job line of the last runs, healthchecks.io style: one tick per
    run, as high as its duration (a floor keeps a quick run visible), coloured by outcome."""
    slot, floor = width / SPARK_RUNS, 4.0
    finished = [r.duration_s for r in runs if r.duration_s is not None]
    scale = max(finished, default=0.0) or 1.0
    offset = width - slot * len(runs)  # newest at the right edge, like the charts
    bars = []
    for index, run in enumerate(runs):
        seconds = run.duration_s
        h = height if run.status in FAILED or seconds is None else max(
            floor, (height - 2) * seconds / scale)
        bars.append(Bar(
            x=round(offset + index * slot + 0.5, 2), y=round(height - h, 2),
            width=round(slot - 1.5, 2), height=round(h, 2), status=run.status,
            failed=run.status in FAILED, slowest=False,
            title=_title(run, seconds_text(seconds)), anomalous=run.anomalous,
        ))
    return Chart(width, height, 0, 0, seconds_text(max(finished, default=None)), bars,
                 measure="spark", label="Recent runs")
