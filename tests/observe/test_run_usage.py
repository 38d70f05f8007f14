"""What a run cost (app/observe/usage.py): measured by the runner, stored on its log row."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from app.adapters.storage import ObjectData, S3Storage
from app.adapters.stripe_gateway import StripeGateway
from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec
from app.core.runner import Runner
from app.mail.smtp import Mailer
from app.observe import usage
from tests.conftest import FixedClock, make_settings, rows
from tests.support.moto_s3 import MotoS3, moto_s3
from tests.support.servers import SmtpSink
from tests.support.stripe_servers import LocalStripe, localstripe

__all__ = ["localstripe", "moto_s3"]

ALLOCATED = 64 * 1024 * 1024
STATEMENTS = 25


def _slow_statement(dialect: str) -> str:
    if dialect == "postgresql":
        return "SELECT pg_sleep(0.2)"
    return ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 1500000) SELECT count(*) FROM c")


def _burn(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        sum(i * i for i in range(1000))


def _usage_of(engine: Engine, run_id: Any) -> dict[str, Any]:
    [row] = rows(engine, "SELECT resource_usage FROM cron_job_log WHERE run_id = :id",
                 id=run_id if engine.dialect.name == "postgresql" else run_id.hex)
    value = row.resource_usage
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[no-any-return]


def _runner(settings: Settings, engine: Engine, clock: FixedClock,
            job: Any) -> Runner:
    spec = JobSpec("costly", "0 3 * * *", job, "a job that spends", critical=False)
    return Runner(settings, engine, clock=clock, jobs={"costly": spec})


def test_a_run_records_its_memory_cpu_and_database_time(
        engine: Engine, settings: Settings, clock: FixedClock, dialect: str) -> None:
    def job(ctx: JobContext) -> JobResult:
        with ctx.engine.connect() as conn:
            for _ in range(STATEMENTS - 1):
                conn.execute(sa.text("SELECT 1"))
            conn.execute(sa.text(_slow_statement(dialect)))
        block = b"x" * ALLOCATED  # written, so resident
        _burn(0.3)
        return JobResult(records_processed=len(block) // ALLOCATED)

    outcome = _runner(settings, engine, clock, job).run("costly", trigger="cli")
    assert outcome.status == "success"
    stored = _usage_of(engine, outcome.run_id)
    assert stored == outcome.usage
    assert stored["cpu_seconds"] >= 0.3
    # Exactly the job's statements: the claim and the closing of the row are not its own.
    assert stored["db_queries"] == STATEMENTS
    assert stored["db_seconds"] >= 0.1
    assert stored["db_seconds"] <= outcome.duration_ms / 1000
    assert stored["peak_memory_bytes"] >= ALLOCATED
    assert 0 <= stored["memory_growth_bytes"] <= stored["peak_memory_bytes"]
    assert stored["calls"] == {"stripe": 0, "smtp": 0, "storage": 0}


def test_a_failed_run_records_what_it_spent_and_a_refused_one_nothing(
        engine: Engine, settings: Settings, clock: FixedClock) -> None:
    def failing(ctx: JobContext) -> JobResult:
        with ctx.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        raise ValueError("boom")

    outcome = _runner(settings, engine, clock, failing).run("costly", trigger="cli")
    assert outcome.status == "error"
    assert _usage_of(engine, outcome.run_id)["db_queries"] == 1


def test_outbound_calls_are_counted_by_service_from_every_thread(
        engine: Engine, tmp_path: Path, clock: FixedClock, smtp_sink: SmtpSink,
        localstripe: LocalStripe, moto_s3: MotoS3) -> None:
    moto_s3.reset()
    settings = make_settings(
        engine.url.render_as_string(hide_password=False), tmp_path,
        stripe_secret_key="sk_test_usage", stripe_api_base=localstripe.url,
        stripe_max_network_retries=0, **smtp_sink.settings, **moto_s3.settings)

    def job(ctx: JobContext) -> JobResult:
        mailer = Mailer(ctx.settings)
        for n in range(2):
            message = EmailMessage()
            message["From"], message["To"] = "cron@example.com", "ops@example.com"
            message["Subject"] = f"usage {n}"
            message.set_content("counted")
            mailer.send(message)
        with StripeGateway(ctx.settings) as gateway:
            gateway.list_subscriptions()

            def missing(n: int) -> None:
                with pytest.raises(stripe.InvalidRequestError):
                    gateway.retrieve_subscription(f"sub_missing_{n}")

            # Worker threads, as subscription-sync uses: they count into the same run.
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(missing, range(3)))
        storage = S3Storage.from_settings(ctx.settings)
        storage.client.create_bucket(Bucket="usage")
        storage.put("usage", "a.txt", ObjectData(b"hello", "text/plain"))
        assert storage.get("usage", "a.txt").body == b"hello"
        return JobResult()

    outcome = _runner(settings, engine, clock, job).run("costly", trigger="cli")
    assert outcome.status == "success", outcome.message
    assert len(smtp_sink.messages()) == 2
    assert _usage_of(engine, outcome.run_id)["calls"] == {"stripe": 4, "smtp": 2,
                                                          "storage": 3}


def test_statements_outside_the_run_or_in_other_threads_are_not_its_own(
        engine: Engine) -> None:
    usage.instrument(engine)
    usage.instrument(engine)  # idempotent: each statement is timed once

    def elsewhere() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    elsewhere()
    with usage.Meter() as meter:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            conn.execute(sa.text("SELECT 2"))
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    elsewhere()
    figures = meter.figures()
    assert figures is not None and figures["db_queries"] == 2
    assert usage.Meter.current() is None
    assert usage.Meter().figures() is None  # never entered: nothing to store


def test_memory_growth_is_what_the_run_added_to_the_process_peak() -> None:
    # A child process inherits its parent's peak (Linux keeps ru_maxrss across fork and
    # exec): the run allocates past it, by ALLOCATED.
    script = (
        "import json, resource\n"
        "from app.observe.usage import Meter\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "resident = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "with Meter() as meter:\n"
        f"    block = b'x' * (max(0, peak - resident) + {ALLOCATED})\n"
        "del block\n"
        "with Meter() as again:\n"
        "    small = b'x' * 1024\n"
        "print(json.dumps([meter.figures(), again.figures()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    first, second = json.loads(out.stdout)
    assert first["memory_growth_bytes"] >= ALLOCATED * 0.9
    assert first["peak_memory_bytes"] >= ALLOCATED
    # Under the earlier peak: the second run raised nothing, and says so.
    assert second["memory_growth_bytes"] == 0
    assert second["peak_memory_bytes"] == first["peak_memory_bytes"]
