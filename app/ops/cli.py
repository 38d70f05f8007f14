"""`voyagesmart-cron` (also `python -m app`): the same runner from a terminal."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from types import FrameType
from typing import Annotated

import typer
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.config import Settings, get_settings
from app.core import registry
from app.db import (
    DatabaseFileError,
    behind_transaction_pooler,
    diagnose,
    is_database_outage,
    make_engine,
    service_engine,
)
from app.ops.billing_cli import analytics_cli, report_cli
from app.ops.consent_cli import consent_cli
from app.ops.schema_cli import schema_cli

# Plain help (rich_markup_mode=None): typer's rich panels show every flag as
# `--dry-run <bool>`, as if it took a value.
cli = typer.Typer(help="VoyageSmart Cron: scheduled maintenance jobs.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)
schedule_cli = typer.Typer(help="Deployment files generated from the job registry.",
                           no_args_is_help=True, rich_markup_mode=None)
cli.add_typer(schedule_cli, name="schedule")
cli.add_typer(analytics_cli, name="analytics")
cli.add_typer(report_cli, name="report")
cli.add_typer(schema_cli, name="schema")
cli.add_typer(consent_cli, name="consent")


def _engine() -> Engine:
    return service_engine(get_settings())


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(
        help="uvicorn's log level: info logs every request (redacted), warning only "
        "problems.")] = "info",
    queue_worker: Annotated[bool, typer.Option(
        "--queue-worker", help="Also work on queued chunks in this process, as "
        "`voyagesmart-cron worker` does (EXECUTION_MODE=queue, docs/queue.md).")] = False,
) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    settings = get_settings()  # fail fast, with the variable named, before uvicorn starts
    if queue_worker:
        if settings.is_sqlite:
            typer.echo("--queue-worker needs a PostgreSQL DATABASE_URL (the queue lives "
                       "there)", err=True)
            raise typer.Exit(2)
        _queue_worker_thread(settings)
    # The app reads each connection's peer itself (app/http/peer.py); uvicorn's own rewrite from
    # X-Forwarded-For is off here too, so its access log shows the real peer.
    uvicorn.run("app.main:app", host=host, port=port, workers=workers, proxy_headers=False,
                log_level=log_level)


def _queue_worker_thread(settings: Settings) -> None:
    """A queue worker beside the server, in a daemon thread: it goes down with the server,
    its chunk in hand retried by the fleet's upkeep (app/queue/broker.py)."""
    import asyncio
    import threading

    from app.queue import broker

    engine = _engine()
    name = broker.worker_name("serve")
    threading.Thread(target=lambda: asyncio.run(broker.work(
        settings, engine, name=name, install_signal_handlers=False)),
        name="queue worker", daemon=True).start()


@cli.command()
def migrate(
    service_only: Annotated[bool, typer.Option(
        "--service-only",
        help="Create or upgrade only the service's own tables (for an existing VoyageSmart "
        "database, whose tables must not be altered).")] = False,
) -> None:
    """Apply the database migrations."""
    from app.ops.migrate import upgrade

    # The one command that may create the database (and the SQLite file's directory).
    try:
        s = get_settings()
        engine = make_engine(s.database_url, may_create=True, transaction_pooler=
                             behind_transaction_pooler(s.database_url, s.database_pooler))
    except DatabaseFileError as exc:
        typer.echo(f"invalid configuration: DATABASE_URL: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        upgrade(engine, service_only=service_only)
    except sa_exc.SQLAlchemyError as exc:
        if not is_database_outage(exc):
            raise
        typer.echo(f"{diagnose(exc)}; nothing was migrated", err=True)
        raise typer.Exit(3) from None
    finally:
        engine.dispose()
    typer.echo("migrations applied" + (" (service tables only)" if service_only else ""))


@cli.command("list")
def list_jobs() -> None:
    """Jobs, schedules, next fire time and last status."""
    from app.core.health import read_facts

    now = dt.datetime.now(dt.UTC)
    problem = None
    # Under SCHEDULE_MODE=groups a group's members are listed with its schedule.
    jobs = registry.scheduled(registry.JOBS, get_settings().schedule_mode)
    try:
        facts, _ = read_facts(_engine(), jobs)
    except sa_exc.SQLAlchemyError as exc:  # the listing is still useful without a database
        if not is_database_outage(exc):
            raise
        problem = diagnose(exc)
        typer.echo(f"run log unavailable: {problem}", err=True)
        facts = {}
    header = f"{'task':<22} {'schedule':<12} {'crit':<5} {'next fire (UTC)':<17} last status"
    typer.echo(header)
    for spec in jobs.values():
        fact = facts.get(spec.name)
        last = f"{fact.last_status} at {fact.last_run:%Y-%m-%d %H:%M}" if (
            fact and fact.last_run) else "never run"
        if problem is not None:
            last = "unknown (no run log)"
        nxt = registry.next_fire(spec.schedule, now)
        typer.echo(f"{spec.name:<22} {spec.schedule:<12} {'yes' if spec.critical else 'no':<5} "
                   f"{nxt:%Y-%m-%d %H:%M} {last}")
    if problem is not None:
        raise typer.Exit(3)


# "\b" keeps click from rewrapping the list (it would split names at their hyphens).
_TASKS_EPILOG = "\b\nTasks:\n" + "\n".join(
    [f"  {spec.name:<22} {spec.explain()} (UTC)" for spec in registry.JOBS.values()]
    + [f"  {g.name:<22} {', '.join(g.members)}" for g in registry.GROUPS.values()])


# Invocations one `run` makes at most while its run answers `partial` (a chunked run
# paused at FUNCTION_MAX_DURATION): each continues the same run.
CONTINUATIONS = 1000


@cli.command(epilog=_TASKS_EPILOG)
def run(
    task: Annotated[str, typer.Argument(help="The task to run (listed below).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Go past a job's safety brake (e.g. storage-cleanup's) and its "
        "precondition; with --slot, run a slot that already ran.")] = False,
    slot: Annotated[str | None, typer.Option(
        "--slot", help="Backfill: run this past slot of the task's schedule (ISO 8601, UTC "
        "when no offset, e.g. 2026-11-28T08:00:00Z) with that day's data window; once, "
        "like its scheduled call.")] = None,
) -> None:
    """Run one job, or a group's jobs, now (a manual run: not tied to a slot, never
    overlapping), or backfill one past slot with --slot."""
    from app.core.runner import DatabaseUnavailable, Runner, UnknownTask
    from app.core.status import RunStatus

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        # Turn SIGTERM into SystemExit so the runner closes the log row and the lease.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    settings = get_settings()
    from app.observe.sentry import observers_for

    # Sentry check-ins for hand-run jobs too, so the monitor sees every real run.
    runner = Runner(settings, _engine(), observers=observers_for(settings))
    group = registry.get_group(task)
    if group is not None:
        from app.core.groups import run_group

        grouped = run_group(runner, group, trigger="cli", dry_run=dry_run, force=force)
        for _ in range(CONTINUATIONS):  # FUNCTION_MAX_DURATION paused a member: go on
            if grouped.status != RunStatus.PARTIAL:
                break
            typer.echo(f"{group.name}: partial, continuing", err=True)
            grouped = run_group(runner, group, trigger="cli", dry_run=dry_run, force=force)
        typer.echo(json.dumps(grouped.as_json(), indent=2, default=str))
        if grouped.http_status >= 400:
            raise typer.Exit(3 if grouped.status == RunStatus.UNAVAILABLE else 1)
        return
    try:
        when = registry.parse_slot(slot) if slot is not None else None
        outcome = runner.run(task, trigger="cli", dry_run=dry_run, force=force, slot=when)
        for _ in range(CONTINUATIONS):
            if outcome.status != RunStatus.PARTIAL:
                break
            # Each call is one invocation (FUNCTION_MAX_DURATION); the next continues the run.
            typer.echo(outcome.message, err=True)
            outcome = runner.run(task, trigger="cli", dry_run=dry_run, force=force, slot=when)
    except registry.BadSlot as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except UnknownTask:
        known = sorted([*registry.JOBS, *registry.GROUPS])
        typer.echo(f"unknown task {task!r}; known: {', '.join(known)}", err=True)
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        typer.echo(f"{exc}; nothing was run", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(outcome.as_json(), indent=2, default=str))
    if outcome.http_status >= 400:
        raise typer.Exit(1)


@cli.command("catch-up")
def catch_up_missed(
    list_only: Annotated[bool, typer.Option(
        "--list", help="Show the missed slots, run nothing.")] = False,
) -> None:
    """Run every missed slot now (trigger catch-up); a cron call runs one of them."""
    from app.core import catch_up
    from app.core.runner import DatabaseUnavailable, Runner, RunOutcome
    from app.observe.sentry import observers_for

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # the runner closes the log row and the lease

    signal.signal(signal.SIGTERM, _terminate)
    settings = get_settings()
    runner = Runner(settings, _engine(), observers=observers_for(settings))
    outcomes: list[RunOutcome] = []
    try:
        missed = catch_up.missed_slots(runner.engine, runner.jobs, runner.clock())
        report: dict[str, object] = {"missed": [m.as_json() for m in missed]}
        if not list_only:
            outcomes = [runner.run(m.task, missed_slot=m.slot) for m in missed]
            report["outcomes"] = [o.as_json() for o in outcomes]
    except DatabaseUnavailable as exc:
        typer.echo(f"{exc}; nothing was run", err=True)
        raise typer.Exit(3) from None
    except sa_exc.SQLAlchemyError as exc:  # reading the run log for missed slots
        if not is_database_outage(exc):
            raise
        typer.echo(f"{diagnose(exc)}; nothing was run", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(report, indent=2, default=str))
    if any(o.http_status >= 400 for o in outcomes):
        raise typer.Exit(1)


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(
        min=1, max=32, help="Chunks worked at once by this process (chunks of one run "
        "that depend on one another always go one at a time).")] = 1,
    name: Annotated[str | None, typer.Option(
        help="The worker's name in logs and on the chunks it works (default: "
        "worker@host:pid).")] = None,
) -> None:
    """Work on queued chunks (EXECUTION_MODE=queue) until SIGINT or SIGTERM, which let the
    chunk in hand finish.  Run any number, on any machine reaching the database."""
    import asyncio
    import contextlib

    from app.logs import configure_logging
    from app.queue import broker

    settings = get_settings()
    if settings.is_sqlite:
        typer.echo("the queue needs a PostgreSQL DATABASE_URL; with SQLite every run is "
                   "inline (EXECUTION_MODE=inline) and needs no worker", err=True)
        raise typer.Exit(2)
    configure_logging(settings)
    # A second Ctrl-C stops procrastinate at once: nothing more to say then.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(broker.work(settings, _engine(), name=name or broker.worker_name(),
                                concurrency=concurrency))


@cli.command()
def restore(
    run_id: Annotated[str, typer.Argument(help="The run whose removals to put back.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
) -> None:
    """Put back what one run removed: archived rows, and anything else its job kept."""
    import uuid

    import sqlalchemy as sa

    from app.core import archive
    from app.models import CronJobLog

    try:
        run = uuid.UUID(run_id)
    except ValueError:
        typer.echo(f"not a run id: {run_id[:80]!r}", err=True)
        raise typer.Exit(2) from None
    settings = get_settings()
    engine = _engine()
    with engine.connect() as conn:
        job = conn.execute(sa.select(CronJobLog.job_name).where(CronJobLog.run_id == run)
                           ).scalar_one_or_none()
    if job is None:
        typer.echo(f"no run {run} in the run log", err=True)
        raise typer.Exit(2)
    now = dt.datetime.now(dt.UTC)
    summary: dict[str, object] = {"run_id": str(run), "task": job, "dry_run": dry_run}
    with engine.begin() as conn:
        if dry_run:
            summary["rows"] = archive.pending_restore(conn, run)
        else:
            report = archive.restore_rows(conn, run, now)
            summary["rows"] = report.restored
            summary["rows_left"] = report.left
    spec = registry.JOBS.get(job)
    other: dict[str, object] = {}
    if spec is not None and spec.restore is not None:
        other = spec.restore(settings, engine, run, now, dry_run)
        summary["other"] = other
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary.get("rows_left") or other.get("left"):
        raise typer.Exit(1)  # something could not come back: the operator must look


@cli.command("seed-demo")
def seed_demo() -> None:
    """Load a small, realistic VoyageSmart dataset (embedded development database)."""
    from app.ops.demo import seed

    settings = get_settings()
    root = settings.storage_root if settings.storage_backend == "local" else None
    try:
        counts = seed(_engine(), now=dt.datetime.now(dt.UTC), storage_root=root)
    except sa_exc.SQLAlchemyError as exc:
        if not is_database_outage(exc):
            raise
        typer.echo(f"{diagnose(exc)}; nothing was loaded", err=True)
        raise typer.Exit(3) from None
    typer.echo("demo data: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@schedule_cli.command("export")
def schedule_export(
    fmt: Annotated[str, typer.Option(
        "--format", help="vercel | crontab | call | github")] = "vercel",
    write: Annotated[bool, typer.Option("--write", help="Write the file in place.")] = False,
    layout: Annotated[str, typer.Option(
        "--layout", help="jobs (each job on its own schedule) | groups (the groups, and the "
        "jobs in no group) | groups-only (Vercel Hobby's two crons).  A grouped layout "
        "needs SCHEDULE_MODE=groups on the service.")] = "jobs",
    stagger: Annotated[bool, typer.Option(
        "--stagger", help="Move minutes (later in their hour, deterministically) so no two "
        "jobs touching a table fire together and none fires at minute 0; without it the "
        "registry's times are kept.")] = False,
) -> None:
    """Print (or write) a scheduler's configuration generated from the registry."""
    from app.ops import deploy

    if layout not in deploy.LAYOUTS:
        typer.echo(f"unknown layout {layout!r}; use {', '.join(deploy.LAYOUTS)}", err=True)
        raise typer.Exit(2)
    moved = _staggered() if stagger else None
    try:
        text = deploy.render(fmt, layout, moved)
    except KeyError:
        typer.echo(f"unknown format {fmt!r}; use {', '.join(deploy.RENDERERS)}", err=True)
        raise typer.Exit(2) from None
    if write:
        path = deploy.write(fmt, layout, moved)
        typer.echo(f"wrote {path}")
    else:
        sys.stdout.write(text)


def _staggered() -> dict[str, str]:
    from app.ops import deploy

    try:
        return deploy.staggered(dt.datetime.now(dt.UTC))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@schedule_cli.command("check")
def schedule_check_command(
    stagger: Annotated[bool, typer.Option(
        "--stagger", help="Check the schedules `schedule export --stagger` writes.")] = False,
    plan: Annotated[str, typer.Option(
        "--vercel-plan", help="hobby (at most once a day per job) | pro")] = "hobby",
    groups: Annotated[bool, typer.Option(
        "--groups", help="Check the grouped layout (SCHEDULE_MODE=groups): also a group whose "
        "members' budgets add up past the function's limit.")] = False,
    function_limit: Annotated[float, typer.Option(
        "--function-limit", help="Seconds one function call may last, for --groups (Vercel: "
        "300 on Hobby, 800 on Pro).")] = 300.0,
) -> None:
    """Schedules that collide (same minute, same tables), fire at the top of the hour
    (GitHub Actions delays and drops those) or that Vercel rejects; with --groups, groups
    too long for one function call.  Exit 1 when any."""
    from app.core.registry import planned, planned_groups
    from app.core.schedule_check import check

    if plan not in ("hobby", "pro"):
        typer.echo(f"unknown Vercel plan {plan!r}; use hobby or pro", err=True)
        raise typer.Exit(2)
    jobs = planned()
    if stagger:
        moved = _staggered()
        jobs = {name: p._replace(schedule=moved[name]) for name, p in jobs.items()}
    report = check(jobs, planned_groups() if groups else None, start=dt.datetime.now(dt.UTC),
                   hobby=plan == "hobby", function_limit=function_limit if groups else None)
    for message in report.messages:
        typer.echo(message)
    if report.messages:
        raise typer.Exit(1)
    typer.echo(f"{len(jobs)} schedules checked: no collision, none at the top of the hour, "
               "all taken by Vercel")


def main() -> None:
    cli()
