"""What the operators' dashboard shows: job overview, run history, duration charts, CSRF.

Reads are set-based: the overview is the three grouped reads of `/health` plus one
windowed query for every job's last runs; a history page is one page query and one count.
The charts are drawn here as SVG geometry (no script, no CDN), so the page works under a
Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import health
from app.core.registry import JobSpec
from app.core.status import FAILED, LOGGED
from app.db import table_of
from app.models import CronJobLog

log_t = table_of(CronJobLog)

CHART_RUNS = 50
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

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


_RUN_COLUMNS = (log_t.c.run_id, log_t.c.job_name, log_t.c.trigger, log_t.c.status,
                log_t.c.started_at, log_t.c.ended_at, log_t.c.message,
                log_t.c.records_processed, log_t.c.attempts, log_t.c.dry_run,
                log_t.c.error_details, log_t.c.anomalies)


def _run_row(row: Any) -> RunRow:
    details = row.error_details
    return RunRow(
        run_id=str(row.run_id), job_name=row.job_name, trigger=row.trigger,
        status=row.status, started_at=row.started_at, ended_at=row.ended_at,
        message=row.message or "", records_processed=row.records_processed or 0,
        attempts=row.attempts or 0, dry_run=bool(row.dry_run),
        error_details=json.dumps(details, indent=2, sort_keys=True) if details else None,
        anomalies=tuple(row.anomalies or ()),
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
    chart: Chart

    @property
    def name(self) -> str:
        return self.spec.name


def overview(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime) -> list[JobView]:
    facts, baseline = health.read_facts(engine, jobs)
    results, _issues = health.evaluate(jobs, facts, now, baseline)
    runs = recent_runs(engine, list(jobs))
    return [JobView(jobs[item.name], item, chart(runs[item.name])) for item in results]


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


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int
    bottom: int
    max_label: str
    bars: list[Bar] = field(default_factory=list)

    @property
    def slowest(self) -> Bar | None:
        return next((b for b in self.bars if b.slowest), None)

    @property
    def failed(self) -> list[Bar]:
        return [b for b in self.bars if b.failed]


def chart(runs: list[RunRow], width: int = 600, height: int = 150) -> Chart:
    """Bars of the last runs' durations, oldest left; failed runs and the slowest marked."""
    top, bottom, left = 22, 18, 4
    plot_h = height - top - bottom
    finished = [r.duration_s for r in runs if r.duration_s is not None]
    longest = max(finished, default=0.0)
    scale = longest if longest > 0 else 1.0
    slot = (width - 2 * left) / CHART_RUNS
    slowest_index = None
    if longest > 0:
        slowest_index = max(range(len(runs)), key=lambda i: runs[i].duration_s or -1.0)
    bars = []
    for index, run in enumerate(runs):
        seconds = run.duration_s
        h = max(2.0, plot_h * (seconds or 0.0) / scale)
        bars.append(Bar(
            x=round(left + index * slot + slot * 0.1, 2),
            y=round(top + plot_h - h, 2),
            width=round(slot * 0.8, 2),
            height=round(h, 2),
            status=run.status,
            failed=run.status in FAILED,
            slowest=index == slowest_index,
            title=(f"{run.started_at:%Y-%m-%d %H:%M} UTC · {run.status}"
                   f"{' (dry run)' if run.dry_run else ''} · {seconds_text(seconds)}"),
        ))
    return Chart(width, height, top, bottom, seconds_text(longest if finished else None),
                 bars)
