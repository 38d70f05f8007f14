"""Can this job run here?  What each job needs, and the one check that reads it.

A job declares, in its registry entry, the tables and columns it reads or writes (`Uses`)
and the settings its integration needs (`Setting`).  The same declaration drives:

- `voyagesmart-cron schema check` (every job, against any database);
- the runner's refusal: a job whose tables do not fit, or whose rows row-level security
  would hide, stops with one line before it touches anything;
- `/health` with the secret and the startup log: jobs that cannot run on this database or
  for lack of settings.

The rule behind the row-level security check: the service sees the whole database or
refuses.  A table under RLS is fine for a role that bypasses it (superuser, BYPASSRLS,
i.e. Supabase's `postgres` and `service_role`, or the table's owner when RLS is not
forced), or where a permissive policy without condition covers that role.

Expected column types come from the models (`app.models`), so the declaration names only
tables and columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import app.models  # noqa: F401  (registers every table: the expected column types)
from app.config import Settings
from app.db import Base


@dataclass(frozen=True)
class Uses:
    """A table a job reads (and, with `writes`, changes with those SQL verbs)."""

    table: str  # "user_subscriptions", or "auth.users" for Supabase's
    columns: tuple[str, ...]
    writes: tuple[str, ...] = ()  # "INSERT", "UPDATE", "DELETE"
    # Why the job can do without the table (then its absence is a warning, not a refusal;
    # the job itself decides what to do, e.g. fall back or protect buckets).
    optional: str | None = None


def uses(table: str, *columns: str, writes: Iterable[str] = (), optional: str | None = None
         ) -> Uses:
    return Uses(table, tuple(columns), tuple(writes), optional)


@dataclass(frozen=True)
class Setting:
    """A setting an integration cannot work without."""

    env: str
    why: str
    present: Callable[[Settings], bool] = field(repr=False)
    production_only: bool = False  # elsewhere the job has a local stand-in (the outbox)


STRIPE_KEY = Setting("STRIPE_SECRET_KEY", "Stripe is not configured",
                     lambda s: s.stripe_secret_key is not None)
SMTP_HOST = Setting("SMTP_HOST", "email goes to the local outbox, not to anyone",
                    lambda s: bool(s.smtp_host), production_only=True)
ADMIN_EMAILS = Setting("ADMIN_EMAILS", "the report has no recipients",
                       lambda s: bool(s.admin_emails), production_only=True)


def missing_settings(needs: Iterable[Setting], settings: Settings) -> list[str]:
    """One phrase per missing setting, e.g. 'STRIPE_SECRET_KEY is not set (Stripe is not
    configured)'."""
    return [f"{need.env} is not set ({need.why})" for need in needs
            if (settings.is_production or not need.production_only)
            and not need.present(settings)]


# --- the database side ------------------------------------------------------------------
@dataclass
class TableCheck:
    table: str
    columns: tuple[str, ...]
    optional: str | None = None
    exists: bool = True
    missing_columns: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    no_privilege: list[str] = field(default_factory=list)  # SQL verbs not granted
    rls: str | None = None  # why row-level security would hide or block rows

    @property
    def usable(self) -> bool:
        """Present, complete and readable: the job can use it."""
        return (self.exists and not self.missing_columns and not self.different
                and not self.no_privilege)

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.exists:
            out.append(f"table {self.table} is missing")
        if self.missing_columns:
            out.append(f"{self.table} lacks column(s) {', '.join(self.missing_columns)}")
        out.extend(f"{self.table}.{d}" for d in self.different)
        if self.no_privilege:
            out.append(f"the connecting role may not {'/'.join(self.no_privilege)} "
                       f"{self.table}")
        if self.rls:
            out.append(f"{self.table}: {self.rls}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "columns": list(self.columns),
                "optional": self.optional, "exists": self.exists,
                "missing_columns": self.missing_columns, "different": self.different,
                "no_privilege": self.no_privilege, "rls": self.rls}


@dataclass
class JobCheck:
    job: str
    tables: list[TableCheck] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)

    @property
    def schema_problems(self) -> list[str]:
        """What stops the job on this database.  An optional table may be absent, never
        hidden by row-level security."""
        out: list[str] = []
        for check in self.tables:
            if check.optional is None:
                out.extend(check.problems)
            elif check.rls:
                out.append(f"{check.table}: {check.rls}")
        return out

    @property
    def warnings(self) -> list[str]:
        return [f"{'; '.join(check.problems)} ({check.optional})" for check in self.tables
                if check.optional is not None and not check.rls and not check.usable]

    @property
    def can_run(self) -> bool:
        return not self.schema_problems and not self.settings

    def refusal(self) -> str | None:
        """The one line a job that cannot run ends with, or None."""
        if self.settings:
            return f"{self.job} cannot run: " + "; ".join(self.settings)
        problems = self.schema_problems
        if not problems:
            return None
        line = f"{self.job} cannot run on this database: " + "; ".join(problems)
        if any(c.rls for c in self.tables):
            line += (". The service must see the whole database: connect as the `postgres` "
                     "or service role")
        return line

    def table(self, name: str) -> TableCheck:
        return next(c for c in self.tables if c.table == name)

    def as_json(self) -> dict[str, Any]:
        return {"job": self.job, "can_run": self.can_run, "settings": self.settings,
                "problems": self.schema_problems, "warnings": self.warnings,
                "tables": [c.as_json() for c in self.tables]}


def _family(type_: Any) -> str | None:
    # Order matters: Boolean and DateTime before anything wider.
    for family, kinds in (
        ("uuid", (sa.Uuid,)), ("boolean", (sa.Boolean,)), ("timestamp", (sa.DateTime,)),
        ("date", (sa.Date,)), ("integer", (sa.Integer,)), ("numeric", (sa.Numeric,)),
        ("json", (sa.JSON,)), ("text", (sa.String, sa.Text)),
    ):
        if isinstance(type_, kinds):
            return family
    impl = getattr(type_, "impl", None)  # TypeDecorator (UTCDateTime)
    return _family(impl) if impl is not None and impl is not type_ else None


def _compatible(expected: str | None, actual: str | None, dialect: str) -> bool:
    if expected is None or actual is None or expected == actual:
        return True
    # SQLite keeps UUIDs as CHAR(32), and declared types are only affinities there.
    return dialect == "sqlite" and expected in ("uuid", "json") and actual == "text"


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return schema or None, table


class _Catalog:
    """Reads the database's catalogue once per check, whatever the number of jobs."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.inspector = sa.inspect(conn)
        self._columns: dict[str, dict[str, Any] | None] = {}
        self._role: tuple[str, bool] | None = None

    def columns(self, name: str) -> dict[str, Any] | None:
        if name not in self._columns:
            schema, table = _split(name)
            try:
                found = self.inspector.has_table(table, schema=schema)
            except sa.exc.SQLAlchemyError:
                found = False
            self._columns[name] = (
                {c["name"]: c["type"] for c in self.inspector.get_columns(table, schema=schema)}
                if found else None)
        return self._columns[name]

    def role(self) -> tuple[str, bool]:
        """(connecting role, bypasses row-level security)."""
        if self._role is None:
            row = self.conn.execute(sa.text(
                "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles "
                "WHERE rolname = current_user")).one()
            self._role = (str(row[0]), bool(row[1]))
        return self._role

    def privileges(self, name: str, verbs: Iterable[str]) -> list[str]:
        if self.dialect != "postgresql":
            return []
        schema, table = _split(name)
        qualified = f'"{schema or "public"}"."{table}"'
        return [verb for verb in verbs if not self.conn.execute(
            sa.text("SELECT has_table_privilege(current_user, :t, :v)"),
            {"t": qualified, "v": verb}).scalar()]

    def hidden_by_rls(self, name: str, verbs: Iterable[str]) -> str | None:
        if self.dialect != "postgresql":
            return None
        role, bypass = self.role()
        if bypass:
            return None
        schema, table = _split(name)
        row = self.conn.execute(sa.text(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, "
            "pg_has_role(current_user, c.relowner, 'USAGE') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t"), {"s": schema or "public", "t": table}
        ).first()
        if row is None or not row[0] or (row[2] and not row[1]):
            return None
        commands = [v for v in ("SELECT", *verbs)]
        open_commands = set(self.conn.execute(sa.text(
            "SELECT DISTINCT p.cmd FROM pg_policies p "
            "WHERE p.schemaname = :s AND p.tablename = :t AND p.permissive = 'PERMISSIVE' "
            "AND coalesce(p.qual, 'true') = 'true' "
            "AND coalesce(p.with_check, 'true') = 'true' "
            "AND EXISTS (SELECT 1 FROM unnest(p.roles) r WHERE r = 'public' OR "
            "(r IN (SELECT rolname FROM pg_roles) AND pg_has_role(current_user, r, 'USAGE')))"
            " AND NOT EXISTS (SELECT 1 FROM pg_policies q WHERE q.schemaname = p.schemaname "
            "AND q.tablename = p.tablename AND q.permissive = 'RESTRICTIVE')"),
            {"s": schema or "public", "t": table}).scalars())
        hidden = [c for c in commands if c not in open_commands and "ALL" not in open_commands]
        if not hidden:
            return None
        return (f"row-level security is on and role {role} does not bypass it: "
                f"{'/'.join(hidden)} would see only the rows its policies allow")


def _check_table(catalog: _Catalog, need: Uses) -> TableCheck:
    check = TableCheck(need.table, need.columns, need.optional)
    actual = catalog.columns(need.table)
    if actual is None:
        check.exists = False
        return check
    model = Base.metadata.tables.get(need.table)
    for column in need.columns:
        if column not in actual:
            check.missing_columns.append(column)
            continue
        if model is not None and column in model.c:
            expected = _family(model.c[column].type)
            found = _family(actual[column])
            if not _compatible(expected, found, catalog.dialect):
                check.different.append(f"{column} is {actual[column]}, expected {expected}")
    check.no_privilege = catalog.privileges(need.table, ("SELECT", *need.writes))
    check.rls = catalog.hidden_by_rls(need.table, need.writes)
    return check


def check_jobs(engine: Engine, settings: Settings, jobs: Mapping[str, Any]) -> dict[str, JobCheck]:
    """Check every job in `jobs` (registry `JobSpec`s) against `engine`'s database."""
    results: dict[str, JobCheck] = {}
    with engine.connect() as conn:
        catalog = _Catalog(conn)
        for name, spec in jobs.items():
            results[name] = JobCheck(
                name, [_check_table(catalog, need) for need in spec.uses],
                missing_settings(spec.settings, settings))
    return results


def check_job(engine: Engine, settings: Settings, spec: Any) -> JobCheck:
    missing = missing_settings(spec.settings, settings)
    if missing or not spec.uses:
        # No database round trip for a job that cannot run anyway, or that uses no table.
        return JobCheck(spec.name, [], missing)
    return check_jobs(engine, settings, {spec.name: spec})[spec.name]


SERVICE_TABLE = "cron_job_log"


def service_tables_present(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(sa.inspect(conn).has_table(SERVICE_TABLE))
