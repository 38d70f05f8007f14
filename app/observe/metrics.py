"""Prometheus metrics, read from the database at scrape time.

Vercel spreads runs over many short-lived instances and a scrape reaches only one of them,
so counters kept in process memory would show a random slice.  The run log and the audit
log are the one record every instance shares: each scrape turns them into metrics with a
handful of grouped queries (no query per job).  What runs cost (app/observe/usage.py) is
summed from each row's `resource_usage` in the same way.  Each app gets its own CollectorRegistry,
never the process-global one, so many apps (tests, workers) never collide.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from app.core import health
from app.core.registry import JobSpec
from app.core.status import LOGGED
from app.db import table_of
from app.models import CronAuditLog, CronJobLog
from app.observe import run_marks, trends, volumes
from app.observe.usage import Service

log = logging.getLogger("app.observe.metrics")
log_t = table_of(CronJobLog)
audit_t = table_of(CronAuditLog)

# Seconds; covers a sub-second no-op up to Vercel Pro's 800 s function limit and beyond.
DURATION_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 900, 1800)
AUTH_FAILURE_OUTCOMES = ("auth_failed",)
REFUSAL_OUTCOMES = ("auth_failed", "rate_limited", "ip_refused")
RECENT = dt.timedelta(hours=1)


def _usage_sums(engine: Engine, names: list[str]) -> dict[str, tuple[Any, ...]]:
    """Per task: CPU seconds, database seconds, statements and calls per service, summed
    over real runs that recorded them; and the peak memory of the latest such run."""
    used = log_t.c.resource_usage
    recorded = [log_t.c.job_name.in_(names), log_t.c.dry_run.is_(False), used.is_not(None)]
    sums = sa.select(
        log_t.c.job_name, sa.func.sum(used["cpu_seconds"].as_float()),
        sa.func.sum(used["db_seconds"].as_float()), sa.func.sum(used["db_queries"].as_integer()),
        *[sa.func.sum(used[("calls", str(s))].as_integer()) for s in Service],
    ).where(*recorded).group_by(log_t.c.job_name)
    rank = sa.func.row_number().over(partition_by=log_t.c.job_name,
                                     order_by=log_t.c.id.desc()).label("rank")
    ranked = sa.select(log_t.c.job_name, used["peak_memory_bytes"].as_float().label("peak"),
                       rank).where(*recorded).subquery()
    peaks = sa.select(ranked.c.job_name, ranked.c.peak).where(ranked.c.rank == 1)
    with engine.connect() as conn:
        latest = {task: peak for task, peak in conn.execute(peaks)}
        return {row[0]: (*row, latest.get(row[0])) for row in conn.execute(sums)}


def _duration_seconds(engine: Engine) -> sa.ColumnElement[float]:
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.extract("epoch", log_t.c.ended_at - log_t.c.started_at), sa.Float)
    return (sa.func.julianday(log_t.c.ended_at) - sa.func.julianday(log_t.c.started_at)) * 86400.0


class RunLogCollector(Collector):
    def __init__(self, engine: Engine, jobs: Callable[[], dict[str, JobSpec]],
                 clock: Callable[[], dt.datetime], invocation_s: float | None = None) -> None:
        self.engine = engine
        self.invocation_s = invocation_s  # Settings.invocation_seconds: the trends' budget
        self.jobs = jobs
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected lazily: describing would query the database at register time

    def collect(self) -> Iterator[Metric]:
        jobs = self.jobs()
        names = list(jobs)
        now = self.clock()
        real = log_t.c.dry_run.is_(False)
        duration = _duration_seconds(self.engine)
        with self.engine.connect() as conn:
            by_status = conn.execute(
                sa.select(log_t.c.job_name, log_t.c.status, sa.func.count())
                .where(log_t.c.job_name.in_(names), real)
                .group_by(log_t.c.job_name, log_t.c.status)
            ).all()
            bucket_cols = [
                sa.func.sum(sa.case((duration <= bound, 1), else_=0)) for bound in DURATION_BUCKETS
            ]
            histogram = conn.execute(
                sa.select(log_t.c.job_name, sa.func.count(), sa.func.sum(duration),
                          sa.func.sum(log_t.c.records_processed), *bucket_cols)
                .where(log_t.c.job_name.in_(names), real, log_t.c.ended_at.is_not(None))
                .group_by(log_t.c.job_name)
            ).all()
            refusals: dict[str, int] = {outcome: int(n) for outcome, n in conn.execute(
                sa.select(audit_t.c.outcome, sa.func.count())
                .where(audit_t.c.created_at >= now - RECENT,
                       audit_t.c.outcome.in_(REFUSAL_OUTCOMES))
                .group_by(audit_t.c.outcome)
            )}
        facts, baseline = health.read_facts(self.engine, jobs)
        results, _issues = health.evaluate(jobs, facts, now, baseline)

        runs = CounterMetricFamily("cron_runs", "Runs recorded in the run log (dry runs "
                                   "excluded), by task and status.", labels=["task", "status"])
        counts = {(task, status): 0 for task in names for status in LOGGED}
        counts.update({(task, status): int(n) for task, status, n in by_status})
        for (task, status), n in sorted(counts.items()):
            runs.add_metric([task, status], n)
        yield runs

        durations = HistogramMetricFamily(
            "cron_run_duration_seconds", "Duration of finished runs.", labels=["task"])
        records = CounterMetricFamily("cron_records_processed",
                                      "Records processed by finished runs.", labels=["task"])
        seen = {row[0]: row for row in histogram}
        for task in names:
            row = seen.get(task)
            total, seconds, processed = (int(row[1]), float(row[2] or 0), int(row[3] or 0)
                                         ) if row else (0, 0.0, 0)
            cumulative = [int(v or 0) for v in row[4:]] if row else [0] * len(DURATION_BUCKETS)
            buckets = [(_le(b), n) for b, n in zip(DURATION_BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", total))
            durations.add_metric([task], buckets, sum_value=seconds)
            records.add_metric([task], processed)
        yield durations
        yield records
        yield from _fleet(self.engine, now)
        yield from self._usage(names)

        last_success = GaugeMetricFamily(
            "cron_last_success_timestamp_seconds",
            "Start of the last successful run (0 when never).", labels=["task"])
        overdue = GaugeMetricFamily("cron_job_overdue", "1 when the job missed its schedule "
                                    "plus grace (as /health decides).",
                                    labels=["task", "critical"])
        stuck = GaugeMetricFamily("cron_job_stuck", "1 when a run is still running past its "
                                  "max runtime.", labels=["task"])
        next_fire = GaugeMetricFamily("cron_job_next_fire_timestamp_seconds",
                                      "Next scheduled fire time.", labels=["task"])
        for item in results:
            success = item.facts.last_success
            last_success.add_metric([item.name], success.timestamp() if success else 0)
            overdue.add_metric([item.name, str(item.critical).lower()], int(item.overdue))
            stuck.add_metric([item.name], int(item.stuck))
            next_fire.add_metric([item.name], item.next_fire.timestamp())
        yield from (last_success, overdue, stuck, next_fire)
        yield from _foresight(self.engine, jobs, now, self.invocation_s)

        auth = GaugeMetricFamily("cron_auth_failures_last_hour",
                                 "Failed authentications in the last hour (audit log).")
        auth.add_metric([], sum(refusals.get(o, 0) for o in AUTH_FAILURE_OUTCOMES))
        yield auth
        refused = GaugeMetricFamily("cron_refused_requests_last_hour",
                                    "Requests refused in the last hour, by reason.",
                                    labels=["reason"])
        for outcome in REFUSAL_OUTCOMES:
            refused.add_metric([outcome], refusals.get(outcome, 0))
        yield refused


    def _usage(self, names: list[str]) -> Iterator[Metric]:
        cpu = CounterMetricFamily("cron_run_cpu_seconds", "CPU seconds of the process during "
                                  "runs (real runs that recorded it).", labels=["task"])
        db = CounterMetricFamily("cron_run_db_seconds", "Seconds runs spent waiting on "
                                 "database statements.", labels=["task"])
        queries = CounterMetricFamily("cron_run_db_statements", "Database statements "
                                      "executed by runs.", labels=["task"])
        calls = CounterMetricFamily("cron_run_outbound_calls", "Outbound calls made by runs "
                                    "(HTTP requests to Stripe and S3, SMTP transactions), "
                                    "retries included.", labels=["task", "service"])
        peak = GaugeMetricFamily("cron_run_peak_memory_bytes", "Peak resident memory of "
                                 "the process when the task's latest run ended (0 when "
                                 "never recorded).", labels=["task"])
        seen = _usage_sums(self.engine, names)
        for task in names:
            row = seen.get(task)
            figures = [float(v or 0) for v in row[1:]] if row else [0.0] * (4 + len(Service))
            cpu.add_metric([task], figures[0])
            db.add_metric([task], figures[1])
            queries.add_metric([task], figures[2])
            for service, n in zip(Service, figures[3:3 + len(Service)], strict=True):
                calls.add_metric([task, str(service)], n)
            peak.add_metric([task], figures[-1])
        yield from (cpu, db, queries, calls, peak)


def _foresight(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime,
               invocation_s: float | None) -> Iterator[Metric]:
    """Unusual latest runs (app/observe/run_marks.py), duration trends against each job's
    budget (app/observe/trends.py) and volume trends against its limit
    (app/observe/volumes.py), as /health reports them."""
    marks = run_marks.latest_marks(engine, list(jobs))
    outlook = trends.job_trends(engine, jobs, now, invocation_s)
    anomalous = GaugeMetricFamily("cron_job_anomalous", "1 when the job's latest finished "
                                  "run is far outside its recent successful runs.",
                                  labels=["task"])
    factor = GaugeMetricFamily("cron_job_anomaly_factor", "How far outside: the factor of "
                               "each mark on the latest run (duration / p95, records / "
                               "median).", labels=["task", "kind"])
    warned = GaugeMetricFamily("cron_job_budget_warning", "1 when the job's duration trend "
                               "crosses its time budget within 30 days.", labels=["task"])
    growth = GaugeMetricFamily("cron_job_duration_growth_per_day", "Fitted growth of the "
                               "job's duration per day (0.05 = +5%).", labels=["task"])
    crossing = GaugeMetricFamily("cron_job_budget_crossing_timestamp_seconds", "When the "
                                 "fitted duration trend reaches the job's time budget.",
                                 labels=["task"])
    for name in jobs:
        latest = marks.get(name)
        anomalous.add_metric([name], int(latest is not None))
        for mark in latest.marks if latest else ():
            factor.add_metric([name, str(mark["kind"])], float(mark["factor"]))
        trend = outlook[name]
        warned.add_metric([name], int(trend.warn))
        if trend.projection is not None:
            growth.add_metric([name], trend.projection.growth_per_day)
            if trend.projection.crosses_at is not None:
                crossing.add_metric([name], trend.projection.crosses_at.timestamp())
    yield from (anomalous, factor, warned, growth, crossing)
    yield from _volumes(volumes.job_volumes(engine, jobs, now, invocation_s))


def _volumes(found: dict[str, volumes.JobVolume]) -> Iterator[Metric]:
    """Measured volumes against what one run can handle (app/observe/volumes.py)."""
    labels = ["task", "measure"]
    latest = GaugeMetricFamily("cron_job_volume", "The volume the job's latest successful "
                               "run measured (objects scanned, messages planned).", labels=labels)
    limit = GaugeMetricFamily("cron_job_volume_limit", "What one run can handle: the lower "
                              "of its measured pace times its budget and a ceiling it "
                              "reports.", labels=labels)
    warned = GaugeMetricFamily("cron_job_volume_warning", "1 when the job's volume trend "
                               "crosses its limit within 30 days.", labels=labels)
    growth = GaugeMetricFamily("cron_job_volume_growth_per_day", "Fitted growth of the "
                               "job's volume per day (0.05 = +5%).", labels=labels)
    crossing = GaugeMetricFamily("cron_job_volume_crossing_timestamp_seconds", "When the "
                                 "fitted volume trend reaches the job's limit.", labels=labels)
    for name, volume in found.items():
        key = [name, volume.measure]
        if volume.latest is not None:
            latest.add_metric(key, volume.latest)
        if volume.limit is not None:
            limit.add_metric(key, volume.limit)
        warned.add_metric(key, int(volume.warn))
        p = volume.projection
        if p is not None:
            growth.add_metric(key, p.growth_per_day)
            if p.crosses_at is not None:
                crossing.add_metric(key, p.crosses_at.timestamp())
    yield from (latest, limit, warned, growth, crossing)


def _fleet(engine: Engine, now: dt.datetime) -> Iterator[Metric]:
    """The queue's workers and chunks (EXECUTION_MODE=queue, app/queue/fleet.py); nothing
    where there is no queue."""
    if engine.dialect.name != "postgresql":
        return
    from app.queue import fleet  # procrastinate is imported only where a queue can be

    try:
        figures = fleet.read(engine, now)
    except sa.exc.SQLAlchemyError:  # the run log's figures are worth more: keep them
        log.warning("queue figures not read", exc_info=True)
        return
    if figures is None:
        return
    alive = GaugeMetricFamily("cron_queue_workers_alive", "Queue workers whose heartbeat "
                              "is recent (calls working as bounded workers included).")
    alive.add_metric([], figures.workers_alive)
    yield alive
    chunks = GaugeMetricFamily("cron_queue_chunks", "Chunks of each open run, by state "
                               "(waiting, running, failed, done).",
                               labels=["task", "run_id", "state"])
    for run in figures.runs:
        for state in ("waiting", "running", "failed", "done"):
            chunks.add_metric([run.task, str(run.run_id), state], getattr(run, state))
    yield chunks
    oldest = GaugeMetricFamily("cron_queue_oldest_waiting_chunk_age_seconds", "Age of the "
                               "oldest open run with a chunk waiting (0: none waits).")
    oldest.add_metric([], figures.oldest_waiting_s or 0.0)
    yield oldest


def _le(bound: float) -> str:
    return str(float(bound))


def build_registry(engine: Engine, jobs: Callable[[], dict[str, JobSpec]],
                   clock: Callable[[], dt.datetime], invocation_s: float | None = None
                   ) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunLogCollector(engine, jobs, clock, invocation_s))
    return registry
