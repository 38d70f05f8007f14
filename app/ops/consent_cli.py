"""`consent import`: record users' consent to re-engagement emails (ENGAGEMENT_REQUIRE_CONSENT)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from app.config import get_settings
from app.db import service_engine

consent_cli = typer.Typer(help="Recorded consent to user emails (cron_email_consent).",
                          no_args_is_help=True)


@consent_cli.command("import")
def consent_import(
    csv_file: Annotated[Path, typer.Argument(
        help="CSV with a header: user_id or email (either per line), optionally granted_at "
        "(ISO 8601; default: now).", exists=True, dir_okay=False, readable=True)],
    source: Annotated[str, typer.Option(
        help="Where the consent was collected, kept with each record (e.g. 'signup form "
        "2026-03').")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, record nothing.")
                       ] = False,
) -> None:
    """Record consent to re-engagement emails for the users a CSV names.

    Users are matched by id or by email in `users`; a line naming no known user is
    reported by line number (never by address) and skipped.  Importing the same file
    twice records nothing the second time.
    """
    from app.mail.recipients import import_consent
    from app.mail.unsubscribe import USER_ENGAGEMENT

    if not source.strip():
        typer.echo("--source must say where the consent comes from", err=True)
        raise typer.Exit(2)
    engine = service_engine(get_settings())
    with csv_file.open(newline="", encoding="utf-8-sig") as fh:
        try:
            report = import_consent(engine, fh, list_name=USER_ENGAGEMENT,
                                    source=source.strip(), now=dt.datetime.now(dt.UTC),
                                    dry_run=dry_run)
        except (ValueError, UnicodeDecodeError) as exc:
            typer.echo(f"{csv_file.name}: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps({"dry_run": dry_run, **report.as_dict()}, indent=2))
    if report.unknown_users or report.invalid:
        raise typer.Exit(1)  # some lines recorded nothing: the operator must look
