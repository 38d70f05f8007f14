"""Through a PgBouncer in transaction mode, as behind Supabase's Supavisor on port 6543.

Such a pooler gives each transaction whichever server connection is free, so nothing may
outlive a transaction: no prepared statement (psycopg prepares a query from its fifth
execution on), no session setting.  The pooler here has fewer server connections than
clients, so consecutive transactions of one client land on different server connections.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from app.core.runner import Runner
from app.db import make_engine
from tests.conftest import (
    IN_CI,
    PG_HOST,
    PG_PORT,
    PG_USER,
    SECRET,
    FixedClock,
    auth,
    make_settings,
)
from tests.support.notification_data import recipients, seed_travellers
from tests.support.servers import SmtpSink, UvicornProcess, free_port

SERVER_CONNECTIONS = 2
CLIENTS = 8
NOW = dt.datetime(2026, 11, 28, 8, 0, 20, tzinfo=dt.UTC)
START = dt.date(2026, 12, 5)


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)
    if found is None:
        message = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if IN_CI:
            pytest.fail(message + " (CI=true: the pooler tests must run)", pytrace=False)
        pytest.skip(message)
    return found


SERVER_ROLE = "vsc_pooler_server"


@pytest.fixture(scope="module")
def bouncer() -> Iterator[int]:
    """PgBouncer in transaction mode before the local PostgreSQL; yields its port."""
    binary = _pgbouncer_binary()
    # Its server connections log in as a role of their own, so that counting them is not
    # confused by other sessions on the suite's shared database.
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres",
                         autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                         (SERVER_ROLE,)).fetchone() is None:
            admin.execute(f"CREATE ROLE {SERVER_ROLE} SUPERUSER LOGIN")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    workdir.chmod(0o755)  # read by the unprivileged user it drops to when started as root
    config = workdir / "pgbouncer.ini"
    config.write_text(f"""\
[databases]
* = host={PG_HOST} port={PG_PORT} user={SERVER_ROLE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
""")
    config.chmod(0o644)
    argv = [binary, str(config)]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "postgres"]  # it refuses to run as root
    log = (workdir / "out.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    dsn = f"host=127.0.0.1 port={port} user={PG_USER} dbname=postgres"
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            break
        except psycopg.Error:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("pgbouncer did not start: "
                            + (workdir / "out.log").read_text(errors="replace"))
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)
    log.close()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pooled_url(bouncer: int, db_url: str) -> str:
    """The test's (emptied, migrated) PostgreSQL database, through the pooler."""
    return make_url(db_url).set(host="127.0.0.1", port=bouncer).render_as_string(False)


@pytest.fixture
def pooled(pooled_url: str) -> Iterator[Engine]:
    """The engine the service builds for a URL declared DATABASE_POOLER=transaction."""
    engine = make_engine(pooled_url, transaction_pooler=True)
    yield engine
    engine.dispose()


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once; return their results, raising the first failure."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def _server_backends(url: str) -> int:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
                         ) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                           " AND usename = %s", (make_url(url).database, SERVER_ROLE)
                           ).fetchone()
    assert row is not None
    return int(row[0])


ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_queries_repeated_past_the_prepare_threshold_survive_shared_server_connections(
        pooled: Engine, db_url: str) -> None:
    start = threading.Barrier(CLIENTS)

    def client(n: int) -> int:
        start.wait()
        total = 0
        with pooled.connect() as conn:  # one client connection, many transactions
            for i in range(25):  # psycopg would prepare from the 5th on
                total += conn.execute(sa.text("SELECT count(*) + :n FROM cron_job_log"),
                                      {"n": i}).scalar_one()
                conn.execute(sa.select(sa.literal(n) + sa.literal(i))).scalar_one()
                conn.commit()
        return total

    assert _concurrently([lambda n=n: client(n) for n in range(CLIENTS)]) == \
        [sum(range(25))] * CLIENTS
    assert 1 <= _server_backends(db_url) <= SERVER_CONNECTIONS


@ON_POSTGRESQL
def test_jobs_run_concurrently_through_the_pooler(
        pooled: Engine, pooled_url: str, db_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    direct = make_engine(db_url)
    try:
        people = seed_travellers(direct, START, NOW, 120)
    finally:
        direct.dispose()
    settings = make_settings(pooled_url, tmp_path, database_pooler="transaction",
                             **smtp_sink.settings)
    tasks = ["trip-reminders", "promo-cleanup", "analytics", "subscription-expiry",
             "user-engagement", "subscription-report"]
    start = threading.Barrier(len(tasks))

    def run(task: str) -> tuple[str, str, str]:
        start.wait()
        # Forced: what is tested is each job's statements through the pooler, whether or
        # not it has work (subscription-expiry has none here, and its precondition would
        # skip it).
        outcome = Runner(settings, pooled, clock=FixedClock(NOW)).run(task, force=True)
        return task, outcome.status, outcome.message or ""

    done = threading.Event()

    def other_clients() -> None:
        """Keep the server connections busy, so consecutive transactions of one client
        rarely find the same one free."""
        with pooled.connect() as conn:
            while not done.is_set():
                conn.execute(sa.text("SELECT pg_sleep(0.002)"))
                conn.commit()

    noise = [threading.Thread(target=other_clients) for _ in range(CLIENTS - 2)]
    for thread in noise:
        thread.start()
    try:
        outcomes = _concurrently([lambda t=t: run(t) for t in tasks])
    finally:
        done.set()
        for thread in noise:
            thread.join(30)
    for task, status, message in outcomes:
        assert status in ("success", "warning"), (task, status, message)
    got = recipients(smtp_sink)
    assert set(got) == people and set(got.values()) == {1}  # every traveller exactly once


@ON_POSTGRESQL
def test_health_and_cron_calls_under_concurrency_through_the_pooler(
        pooled_url: str, db_url: str, tmp_path: Path) -> None:
    """The service as deployed: DATABASE_URL is the pooler's, declared transaction."""
    server = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": pooled_url, "DATABASE_POOLER": "transaction",
        "CRON_SECRET": SECRET, "DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "text",
    }, cwd=tmp_path).start()
    start = threading.Barrier(CLIENTS)

    def client(n: int) -> list[tuple[str, int, dict[str, Any]]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            start.wait()
            for i in range(12):
                path = "/api/cron/promo-cleanup?dry_run=1" if n == 0 and i % 4 == 0 \
                    else "/health"
                got = http.get(path, headers=auth())
                answers.append((path, got.status_code, got.json()))
        return answers

    try:
        answers = [a for each in _concurrently([lambda n=n: client(n) for n in range(CLIENTS)])
                   for a in each]
    finally:
        server.stop()
    for path, code, body in answers:
        if path == "/health":  # healthy or not is the jobs' business; the database is fine
            assert body["database"] == "ok" and "schema_check_error" not in body, body
        else:
            assert (code, body["status"]) == (200, "success"), body
    assert "prepared statement" not in server.captured, server.captured
    assert 1 <= _server_backends(db_url) <= SERVER_CONNECTIONS
