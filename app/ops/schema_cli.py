"""`voyagesmart-cron schema check`: can every job run on this database?"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.config import get_settings
from app.db import service_engine

schema_cli = typer.Typer(help="What the jobs need from the database, and what it has.",
                         no_args_is_help=True)


@schema_cli.command("check")
def schema_check(
    job: Annotated[list[str] | None, typer.Option(
        "--job", help="Check only this job (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ignore_settings: Annotated[bool, typer.Option(
        "--ignore-settings",
        help="Judge the database only, not the settings of this shell.")] = False,
) -> None:
    """Per job: the tables and columns it needs, what is missing or different, and any
    row-level security that would hide rows from the connecting role.  Exits 1 when a job
    cannot run."""
    from sqlalchemy import exc as sa_exc

    from app.core.registry import JOBS
    from app.core.requirements import check_jobs, service_tables_present

    settings = get_settings()
    unknown = sorted(set(job or []) - set(JOBS))
    if unknown:
        typer.echo(f"unknown job(s) {', '.join(unknown)}; known: {', '.join(JOBS)}", err=True)
        raise typer.Exit(2)
    jobs = {name: spec for name, spec in JOBS.items() if not job or name in job}
    engine = service_engine(settings)
    try:
        results = check_jobs(engine, settings, jobs)
        service = service_tables_present(engine)
    except sa_exc.SQLAlchemyError as exc:
        typer.echo(f"database unreachable ({type(exc).__name__}); nothing checked", err=True)
        raise typer.Exit(3) from None
    if ignore_settings:
        for result in results.values():
            result.settings = []
    blocked = [name for name, result in results.items() if not result.can_run]
    if as_json:
        typer.echo(json.dumps({"database": engine.dialect.name, "service_tables": service,
                               "jobs": {n: r.as_json() for n, r in results.items()},
                               "cannot_run": blocked}, indent=2))
    else:
        typer.echo(f"database: {engine.dialect.name}; service tables: "
                   + ("present" if service else
                      "missing (run `voyagesmart-cron migrate --service-only`)"))
        for name, result in results.items():
            typer.echo(f"\n{name}: {'ok' if result.can_run else 'CANNOT RUN'}")
            for line in result.settings:
                typer.echo(f"  setting: {line}")
            for check in result.tables:
                state = "ok" if check.usable and not check.rls else "; ".join(check.problems)
                optional = " (optional)" if check.optional else ""
                typer.echo(f"  {check.table}{optional} [{', '.join(check.columns)}]: {state}")
            for warning in result.warnings:
                typer.echo(f"  warning: {warning}")
        typer.echo("\n" + (f"{len(blocked)} job(s) cannot run: {', '.join(blocked)}" if blocked
                           else "every job can run here"))
    if blocked:
        raise typer.Exit(1)
