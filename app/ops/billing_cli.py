"""`analytics show` and `report show`: read what the billing jobs stored."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Connection

from app.config import get_settings
from app.db import service_engine

analytics_cli = typer.Typer(help="Weekly analytics stored by the `analytics` job.",
                            no_args_is_help=True, rich_markup_mode=None)
report_cli = typer.Typer(help="Monthly reports stored by `subscription-report`.",
                         no_args_is_help=True, rich_markup_mode=None)


def _print(value: dict[str, Any]) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _stored(label: str, parse: Callable[[str], object], shape: str, kind: str,
            read: Callable[[Connection, str], dict[str, Any] | None]) -> dict[str, Any]:
    """The row `read` finds for `label`; exit 2 when `parse` refuses it, 1 when absent."""
    try:
        parse(label)
    except ValueError:
        typer.echo(f"{label!r} is not {shape}", err=True)
        raise typer.Exit(2) from None
    with service_engine(get_settings()).connect() as conn:
        row = read(conn, label)
    if row is None:
        typer.echo(f"no {kind} stored for {label}", err=True)
        raise typer.Exit(1)
    return row


@analytics_cli.command("show")
def analytics_show(
    week: Annotated[str, typer.Option("--week", help="ISO week, e.g. 2026-W47.")],
) -> None:
    """The stored figures of one ISO week."""
    from app.jobs.analytics import read_week, week_start

    _print(_stored(week, week_start, "an ISO week like 2026-W47", "analytics", read_week))


@report_cli.command("show")
def report_show(
    month: Annotated[str, typer.Option("--month", help="Month, e.g. 2026-10.")],
    csv: Annotated[bool, typer.Option("--csv", help="Print the CSV instead.")] = False,
) -> None:
    """One month's subscription report, archived or not."""
    from app.jobs.subscription_report import month_start, read_report

    row = _stored(month, month_start, "a month like 2026-10", "report", read_report)
    if csv:
        typer.echo(row["csv"], nl=False)
        return
    _print({k: v for k, v in row.items() if k != "csv"})
