"""Engine, sessions and the column types shared by every table."""

from __future__ import annotations

import datetime as dt
import functools
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Timezone-aware datetimes on both dialects.

    PostgreSQL stores `timestamptz`; SQLite has no zone, so values are normalised to UTC on
    the way in and marked UTC on the way out.  Comparisons in SQL stay correct because every
    stored value is UTC in the same text format.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        moment: dt.datetime = (
            dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        )
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UUIDType = sa.Uuid(as_uuid=True)


def new_uuid() -> uuid.UUID:
    return uuid.uuid4()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the dashboard and health read while a job writes; busy_timeout makes a
    # second process wait for the write lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    attach_auth(dbapi_connection)


def auth_database_path(main_path: str) -> str:
    """The file that holds `auth.users` next to a SQLite database (`<file>-auth`, beside
    SQLite's own `-wal` and `-shm`); in memory for an in-memory database."""
    return f"{main_path}-auth" if main_path not in ("", ":memory:") else ":memory:"


# Supabase's `ensure_user_subscription_trigger` (a premium year at sign-up, no Stripe id),
# for SQLite.  A trigger stored in one database file cannot write another, so it is a TEMP
# trigger, created on every connection once both tables exist.
_SQLITE_SIGNUP_TRIGGER = """
CREATE TEMP TRIGGER IF NOT EXISTS ensure_user_subscription
AFTER INSERT ON auth.users
FOR EACH ROW
WHEN NOT EXISTS (SELECT 1 FROM main.user_subscriptions WHERE user_id = NEW.id)
BEGIN
  INSERT INTO user_subscriptions
    (id, user_id, tier, status, valid_until, cancel_at_period_end, created_at, updated_at)
  VALUES (lower(hex(randomblob(16))), NEW.id, 'premium', 'active',
          strftime('%Y-%m-%d %H:%M:%S', 'now', '+1 year') || '.000000', 0,
          strftime('%Y-%m-%d %H:%M:%S', 'now') || '.000000',
          strftime('%Y-%m-%d %H:%M:%S', 'now') || '.000000');
END
"""


def attach_auth(dbapi_connection: Any) -> None:
    """Attach the SQLite database that stands in for Supabase's `auth` schema.

    Why a sibling file attached as `auth` rather than a table of another name: every
    statement then says `auth.users` on SQLite as on PostgreSQL, so the jobs, the models
    and `schema check` have one spelling.  What SQLite cannot do across two files is
    enforced only on PostgreSQL: the foreign keys to `auth.users`.
    """
    cursor = dbapi_connection.cursor()
    try:
        databases = {row[1]: row[2] for row in cursor.execute("PRAGMA database_list")}
        if "auth" not in databases:
            cursor.execute("ATTACH DATABASE ? AS auth",
                           (auth_database_path(databases.get("main") or ""),))
            cursor.execute("PRAGMA auth.journal_mode=WAL")
        install_sqlite_signup_trigger(cursor)
    finally:
        cursor.close()


def install_sqlite_signup_trigger(cursor: Any) -> None:
    """Create the sign-up trigger for this connection when both tables exist."""
    present = cursor.execute(
        "SELECT (SELECT count(*) FROM auth.sqlite_master WHERE type = 'table' AND name = "
        "'users') + (SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND "
        "name = 'user_subscriptions')").fetchone()[0]
    if present == 2:
        cursor.execute(_SQLITE_SIGNUP_TRIGGER)


MIGRATE_HINT = "run `voyagesmart-cron migrate`"


class DatabaseFileError(RuntimeError):
    """The SQLite file's directory cannot be created (raised only when creating)."""


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _watch_sqlite_file(engine: Engine, path: str, *, may_create: bool) -> None:
    """Tie every pooled connection to the file it opened.

    A connection keeps an unlinked file open and keeps answering from it, so a database
    deleted (or replaced by `migrate`) under a running service would go unnoticed, and
    its writes would go to a file nobody can see.  On checkout a connection whose file is
    no longer the one at `path` is discarded; the fresh one then opens the file that is
    there, or fails.  Without `may_create`, connections open the file read-write only
    (`mode=rw`), so a missing database is an error, never a new empty file.
    """
    absolute = os.path.abspath(path)

    def connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
                ) -> None:
        if not may_create:
            cargs[:1] = [f"file:{urllib.parse.quote(absolute)}?mode=rw"]
            cparams["uri"] = True

    def opened(_dbapi_connection: Any, record: Any) -> None:
        record.info["file"] = _file_identity(absolute)

    def checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        current = _file_identity(absolute)
        if current is None or current != record.info.get("file"):
            raise sa_exc.DisconnectionError("the database file was deleted or replaced")

    event.listen(engine, "do_connect", connect)
    event.listen(engine, "connect", opened)
    event.listen(engine, "checkout", checkout)


def make_engine(url: str, *, may_create: bool = True, transaction_pooler: bool | None = None,
                serverless: bool = False, **kwargs: Any) -> Engine:
    """An engine for `url`.  `may_create=False` (the service and its commands, except
    `migrate`) never creates a SQLite file or its directory as a side effect.  On
    PostgreSQL, `transaction_pooler` (default: guessed from the URL, see
    `behind_transaction_pooler`) turns prepared statements off; it and `serverless` drop
    the connection pool."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        on_disk = bool(path) and path != ":memory:" and not path.startswith("file:")
        if on_disk and may_create:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseFileError(
                    f"cannot create the directory of the SQLite database "
                    f"{Path(path).parent}: {exc.strerror or type(exc).__name__}") from None
        engine = sa.create_engine(url, connect_args={"timeout": 15}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if on_disk:
            _watch_sqlite_file(engine, path, may_create=may_create)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 5,
                                    "application_name": "voyagesmart-cron"}
    if transaction_pooler is None:
        transaction_pooler = behind_transaction_pooler(url)
    if transaction_pooler:
        # A transaction pooler hands each transaction to whichever server connection is
        # free: a statement prepared on one is unknown on the next ("prepared statement
        # ... does not exist") or clashes with another client's ("already exists").
        # psycopg prepares a query from its fifth execution on; None means never.
        connect_args["prepare_threshold"] = None
    if transaction_pooler or serverless:
        # No pool (docs/serverless.md).  Behind a pooler, the pooler is the pool: a
        # connection to it costs a handshake, not a server backend.  In a serverless
        # function, 5 + 5 idle connections kept in every warm instance add up to the
        # database's limit under fan-out; opened per use, an instance holds a connection
        # only while it works.  Not a pool of one: a run uses two connections at once (its
        # session and the mail hand-over record), so a pool of one would deadlock it.
        return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args,
                                **kwargs)
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args, **kwargs
    )


# Supabase's Supavisor answers in transaction mode on this port (session mode on 5432).
SUPAVISOR_TRANSACTION_PORT = 6543


def behind_transaction_pooler(url: str, declared: str = "auto") -> bool:
    """Whether `url` reaches PostgreSQL through a transaction-mode pooler: as declared
    (`DATABASE_POOLER=transaction`, `session` or `none`), else guessed from Supavisor's
    transaction port.  Declare it for any other pooler (PgBouncer's port is its own)."""
    if declared != "auto":
        return declared == "transaction"
    parsed = make_url(url)
    return (parsed.get_backend_name() in ("postgresql", "postgres")
            and parsed.port == SUPAVISOR_TRANSACTION_PORT)


def libpq_conninfo(url: str) -> str:
    """DATABASE_URL as libpq reads it (SQLAlchemy's driver name taken out): for what
    connects without SQLAlchemy (the queue, the fleet's rate limiter)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@functools.lru_cache(maxsize=8)
def engine_for(url: str, *, pooler: str = "auto", serverless: bool = False) -> Engine:
    """One engine per URL per process (Vercel functions reuse a warm process).  It never
    creates a database: only `migrate` does (`make_engine(url, may_create=True)`)."""
    return make_engine(url, may_create=False,
                       transaction_pooler=behind_transaction_pooler(url, pooler),
                       serverless=serverless)


class _DatabaseSettings(Protocol):
    @property
    def database_url(self) -> str: ...
    @property
    def database_pooler(self) -> str: ...
    @property
    def vercel(self) -> bool: ...


def service_engine(settings: _DatabaseSettings) -> Engine:
    """The engine the service and its commands use, shaped by where they run:
    DATABASE_POOLER and VERCEL (docs/serverless.md)."""
    return engine_for(settings.database_url, pooler=settings.database_pooler,
                      serverless=settings.vercel)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def ping(engine: Engine) -> None:
    """Raise if the database does not answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


# What an operator reads about an unusable database, by state (never the driver's own text:
# it may name hosts or users).
DATABASE_PROBLEMS = {
    "unreachable": "database unreachable",
    "missing": f"database file missing; {MIGRATE_HINT}",
    "no_schema": f"database has no schema; {MIGRATE_HINT}",
}


def database_state(exc: BaseException) -> str:
    """`missing` (no SQLite file), `no_schema` (no service tables) or `unreachable`."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "unable to open database file" in text:
        return "missing"
    pgcode = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if "no such table" in text or pgcode == "42P01":  # undefined_table
        return "no_schema"
    return "unreachable"


def diagnose(exc: BaseException) -> str:
    return DATABASE_PROBLEMS[database_state(exc)]


def is_database_outage(exc: BaseException) -> bool:
    """Errors that mean "the database is not usable", not "this statement is wrong"."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.ProgrammingError) and database_state(exc) == "no_schema"


def upsert(dialect: sa.Dialect, table: sa.Table) -> Any:
    """`INSERT` with `ON CONFLICT` support for the connection's dialect (PostgreSQL or SQLite).

    Both dialects expose the same `on_conflict_do_nothing` / `on_conflict_do_update` API.
    """
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite_insert(table)


def table_of(model: type[Base]) -> sa.Table:
    """The Core table behind a mapped class, typed as a Table for insert/update/delete."""
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table
