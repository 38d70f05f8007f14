"""`voyagesmart-cron` (also `python -m app`): the same runner from a terminal."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from types import FrameType
from typing import Annotated

import typer
from sqlalchemy.engine import Engine

from app import registry
from app.billing_cli import analytics_cli, report_cli
from app.config import get_settings
from app.consent_cli import consent_cli
from app.db import engine_for
from app.schema_cli import schema_cli

cli = typer.Typer(help="VoyageSmart Cron: scheduled maintenance jobs.", no_args_is_help=True,
                  add_completion=False)
schedule_cli = typer.Typer(help="Deployment files generated from the job registry.",
                           no_args_is_help=True)
cli.add_typer(schedule_cli, name="schedule")
cli.add_typer(analytics_cli, name="analytics")
cli.add_typer(report_cli, name="report")
cli.add_typer(schema_cli, name="schema")
cli.add_typer(consent_cli, name="consent")


def _engine() -> Engine:
    return engine_for(get_settings().database_url)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    get_settings()  # fail fast, with the variable named, before uvicorn starts
    uvicorn.run("app.main:app", host=host, port=port, workers=workers, proxy_headers=False)


@cli.command()
def migrate(
    service_only: Annotated[bool, typer.Option(
        "--service-only",
        help="Create or upgrade only the service's own tables (for an existing VoyageSmart "
        "database, whose tables must not be altered).")] = False,
) -> None:
    """Apply the database migrations."""
    from app.migrate import upgrade

    upgrade(_engine(), service_only=service_only)
    typer.echo("migrations applied" + (" (service tables only)" if service_only else ""))


@cli.command("list")
def list_jobs() -> None:
    """Jobs, schedules, next fire time and last status."""
    from app.health import read_facts

    now = dt.datetime.now(dt.UTC)
    try:
        facts, _ = read_facts(_engine(), registry.JOBS)
    except Exception as exc:  # the listing is still useful without a database
        typer.echo(f"(run log unavailable: {type(exc).__name__})", err=True)
        facts = {}
    header = f"{'task':<22} {'schedule':<12} {'crit':<5} {'next fire (UTC)':<17} last status"
    typer.echo(header)
    for spec in registry.JOBS.values():
        fact = facts.get(spec.name)
        last = f"{fact.last_status} at {fact.last_run:%Y-%m-%d %H:%M}" if (
            fact and fact.last_run) else "never run"
        nxt = registry.next_fire(spec.schedule, now)
        typer.echo(f"{spec.name:<22} {spec.schedule:<12} {'yes' if spec.critical else 'no':<5} "
                   f"{nxt:%Y-%m-%d %H:%M} {last}")


@cli.command()
def run(
    task: Annotated[str, typer.Argument(help="Task name, e.g. promo-cleanup.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Go past a job's safety brake (e.g. storage-cleanup's).")] = False,
) -> None:
    """Run one job now (a manual run: not tied to a slot, never overlapping)."""
    from app.runner import DatabaseUnavailable, Runner, UnknownTask

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        # Turn SIGTERM into SystemExit so the runner closes the log row and the lease.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    settings = get_settings()
    from app.monitoring import observers_for

    # Sentry check-ins for hand-run jobs too, so the monitor sees every real run.
    runner = Runner(settings, _engine(), observers=observers_for(settings))
    try:
        outcome = runner.run(task, trigger="cli", dry_run=dry_run, force=force)
    except UnknownTask:
        typer.echo(f"unknown task {task!r}; known: {', '.join(sorted(registry.JOBS))}", err=True)
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        typer.echo(f"database unreachable ({exc}); nothing was run", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(outcome.as_json(), indent=2, default=str))
    if outcome.http_status >= 400:
        raise typer.Exit(1)


@cli.command()
def restore(
    run_id: Annotated[str, typer.Argument(help="The run whose removals to put back.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
) -> None:
    """Put back what one run removed: archived rows, and anything else its job kept."""
    import uuid

    import sqlalchemy as sa

    from app import archive
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
    from app.demo import seed

    settings = get_settings()
    root = settings.storage_root if settings.storage_backend == "local" else None
    counts = seed(_engine(), now=dt.datetime.now(dt.UTC), storage_root=root)
    typer.echo("demo data: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@schedule_cli.command("export")
def schedule_export(
    fmt: Annotated[str, typer.Option("--format", help="vercel | crontab | github")] = "vercel",
    write: Annotated[bool, typer.Option("--write", help="Write the file in place.")] = False,
) -> None:
    """Print (or write) a scheduler's configuration generated from the registry."""
    from app import deploy

    try:
        text = deploy.render(fmt)
    except KeyError:
        typer.echo(f"unknown format {fmt!r}; use vercel, crontab or github", err=True)
        raise typer.Exit(2) from None
    if write:
        path = deploy.write(fmt)
        typer.echo(f"wrote {path}")
    else:
        sys.stdout.write(text)


def main() -> None:
    cli()
