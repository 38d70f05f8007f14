"""`analytics show` and `report show`: read what the billing jobs stored."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.config import get_settings
from app.db import engine_for

analytics_cli = typer.Typer(help="Weekly analytics stored by the `analytics` job.",
                            no_args_is_help=True)
report_cli = typer.Typer(help="Monthly reports stored by `subscription-report`.",
                         no_args_is_help=True)


def _print(value: dict[str, Any]) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@analytics_cli.command("show")
def analytics_show(
    week: Annotated[str, typer.Option("--week", help="ISO week, e.g. 2026-W47.")],
) -> None:
    """The stored figures of one ISO week."""
    from app.jobs.analytics import read_week, week_start

    try:
        week_start(week)
    except ValueError:
        typer.echo(f"{week!r} is not an ISO week like 2026-W47", err=True)
        raise typer.Exit(2) from None
    with engine_for(get_settings().database_url).connect() as conn:
        row = read_week(conn, week)
    if row is None:
        typer.echo(f"no analytics stored for {week}", err=True)
        raise typer.Exit(1)
    _print(row)


@report_cli.command("show")
def report_show(
    month: Annotated[str, typer.Option("--month", help="Month, e.g. 2026-10.")],
    csv: Annotated[bool, typer.Option("--csv", help="Print the CSV instead.")] = False,
) -> None:
    """One month's subscription report, archived or not."""
    from app.jobs.subscription_report import month_start, read_report

    try:
        month_start(month)
    except ValueError:
        typer.echo(f"{month!r} is not a month like 2026-10", err=True)
        raise typer.Exit(2) from None
    with engine_for(get_settings().database_url).connect() as conn:
        row = read_report(conn, month)
    if row is None:
        typer.echo(f"no report stored for {month}", err=True)
        raise typer.Exit(1)
    if csv:
        typer.echo(row["csv"], nl=False)
        return
    _print({k: v for k, v in row.items() if k != "csv"})
