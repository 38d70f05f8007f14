"""What every run goes through, whatever triggered it.

1. Resolve the slot: a scheduled call belongs to the latest fire time at or before now; a
   catch-up to the missed slot it runs (app/core/catch_up.py); a manual, forced or dry run
   belongs to no slot; a backfill names a past slot of the
   schedule, and the job's data window follows it (`JobContext.as_of`).
2. Claim the task's lease with a conditional UPDATE; the row count says who won, across
   every process and instance sharing the database.  While the run lives, its heartbeat
   (app/core/heartbeat.py) renews the lease every HEARTBEAT_INTERVAL; a holder that stopped
   renewing lets go of it DEAD_AFTER later, not after the job's whole max runtime.  The
   next call for the task then takes the lease, closes the dead run's `running` row as
   abandoned (saying when its heartbeat stopped and which run took over) and runs the slot
   again as a new run with its own row: the slot is done by the new run.
   A new row rather than the dead one continued, because a run id is one process's claim:
   the mail rows it claimed carry it, and its hand-over cursor says which message it had in
   flight.  Closing the dead row is what settles that (app/mail/delivery.py reads the
   cursor of a run no longer running, releases the rest, and refuses any further hand-over
   of a run closed under it), so a process only thought dead can never send once more
   under the id the new run would share.  No email goes twice; at most the message in
   flight ends `unconfirmed`.
3. Under the lease, a slot that already has a successful run is answered as a duplicate.
4. Write the `running` log row; unless forced, ask the job's precondition and close the run
   `skipped` with its reason when there is nothing to do (a dry run reports the job's plan
   and `would_skip` with the reason); else run the job with retries of
   transient errors (exponential backoff with full jitter, stopped before the time budget
   runs out), each attempt recorded on the row.
5. Close the row (also when the job raises or the process is interrupted), release the
   lease, and mark the row when a run that did its work is unlike the job's recent runs
   (app/observe/run_marks.py).
6. Alert the admins of what changed in any job's incident state: a job that began failing,
   is overdue or stuck, or recovered (app/observe/alerts.py; also after a call that ran
   nothing, a duplicate or a collision).

Longer than the usual 400 lines because a run's claim, lease, retries and closing are one
story told in order, and the execution-model rework (the issue "Runs that outlive one
invocation") replaces this module's claim and lease: it is left whole for that change.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import sqlalchemy as sa
import tenacity
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import budget, chunks, registry
from app.core.context import JobContext, JobResult
from app.core.errors import JobAborted, JobRefused, TransientError
from app.core.heartbeat import Heartbeat
from app.core.registry import JobSpec
from app.core.requirements import JobCheck, check_job
from app.core.status import DONE, RunStatus
from app.db import diagnose, is_database_outage, table_of, upsert
from app.logs import Redactor, secrets_of
from app.models import CronJobLease, CronJobLog
from app.observe import alerts, usage
from app.observe.run_marks import JUDGED, mark_run

log = logging.getLogger("app.core.runner")

lease_t = table_of(CronJobLease)
log_t = table_of(CronJobLog)

SCHEDULED_TRIGGERS = frozenset({"vercel", "github-actions", "crontab", "http"})
MANUAL_TRIGGERS = frozenset({"cli", "dashboard", "test"})
# A slot no scheduler delivered, run by a later call (app/core/catch_up.py).
CATCH_UP = "catch-up"
TRIGGERS = SCHEDULED_TRIGGERS | MANUAL_TRIGGERS | {CATCH_UP}
# Status of an outcome -> HTTP status a scheduler can act on.
HTTP_STATUS = {
    RunStatus.SUCCESS: 200,
    RunStatus.WARNING: 200,
    RunStatus.SKIPPED: 200,
    RunStatus.PARTIAL: 202,  # accepted: the next call for the slot continues it
    RunStatus.DUPLICATE: 200,
    RunStatus.RUNNING: 409,
    RunStatus.DISABLED: 503,
    RunStatus.UNAVAILABLE: 503,
    RunStatus.ERROR: 500,
}


@dataclass(frozen=True)
class _Claimed:
    """The run a call works on: a new one, or the slot's `partial` run it continues."""

    run_id: uuid.UUID
    slot: dt.datetime | None
    origin: dt.datetime  # when the run began
    continued: bool = False


class UnknownTask(LookupError):
    pass


class DatabaseUnavailable(RuntimeError):
    """Nothing was run: the database is unreachable, missing or has no schema (the message
    says which, and what to do)."""


@dataclass
class RunOutcome:
    task: str
    run_id: uuid.UUID | None
    status: RunStatus
    trigger: str
    slot: dt.datetime | None = None
    dry_run: bool = False
    records_processed: int = 0
    duration_ms: int = 0
    message: str = ""
    attempts: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # app/observe/run_marks.py
    usage: dict[str, Any] | None = None  # app/observe/usage.py; not in the HTTP answer

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.status, 500)

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "run_id": str(self.run_id) if self.run_id else None,
            "status": self.status,
            "trigger": self.trigger,
            "slot": self.slot.isoformat() if self.slot else None,
            "dry_run": self.dry_run,
            "records_processed": self.records_processed,
            "duration_ms": self.duration_ms,
            "attempts": self.attempts,
            "message": self.message,
            "details": self.details,
        }


class RunObserver(Protocol):
    """Hooks for monitoring (Sentry check-ins, metrics); must not raise."""

    def run_started(self, spec: JobSpec, ctx: JobContext) -> None: ...

    def run_finished(self, spec: JobSpec, outcome: RunOutcome) -> None: ...


def is_transient(exc: BaseException) -> bool:
    """May the same work succeed later?  Adapters raise TransientError for their library's
    passing failures (app/adapters/, app/mail/); what is left to decide here is the
    project's own and the database's: network, timeout and disconnect failures."""
    return isinstance(exc, TransientError | ConnectionError | TimeoutError
                      | sa_exc.OperationalError | sa_exc.DisconnectionError)


def _error_summary(exc: BaseException, redact: Redactor) -> str:
    """First line of the error, with secrets and email addresses taken out: it is stored
    in the run log and returned in the HTTP answer."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact(text, hide_emails=True)
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Runner:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], None] = time.sleep,
        observers: Sequence[RunObserver] = (),
        jobs: dict[str, JobSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.sleep = sleep
        self.observers = list(observers)
        # Under SCHEDULE_MODE=groups a group's members take its schedule (their slots); a
        # caller that passes `jobs` passes them as scheduled (app/main.py).
        self.jobs = jobs if jobs is not None else registry.scheduled(
            registry.JOBS, settings.schedule_mode)
        self._redact = Redactor(secrets_of(settings))
        usage.instrument(engine)

    # --- public -------------------------------------------------------------------------
    def run(
        self,
        task: str,
        *,
        trigger: str = "cli",
        dry_run: bool = False,
        force: bool = False,
        missed_slot: dt.datetime | None = None,
        slot: dt.datetime | None = None,
        until: float | None = None,
    ) -> RunOutcome:
        """Run `task` now.  With `slot` (a backfill), run that past slot of its schedule
        (registry.BadSlot when it has no such slot, or it is in the future): once, like a
        scheduled delivery of it, unless forced.  `missed_slot`: run that slot, which no
        scheduler delivered, as a catch-up (app/core/catch_up.py finds it; `trigger` is
        then `catch-up`).  `until`: when this invocation ends (time.monotonic()), for a call
        that began earlier; by default FUNCTION_MAX_DURATION from now, when set."""
        spec = self.jobs.get(task) or self.jobs.get(registry.ALIASES.get(task, ""))
        if spec is None:
            raise UnknownTask(task)
        now = self.clock()
        scheduled = trigger in SCHEDULED_TRIGGERS and not force and not dry_run
        if slot is not None:
            slot = registry.check_slot(spec, slot, now)
        elif scheduled:
            slot = registry.previous_fire(spec.schedule, now)
        if missed_slot is not None:
            trigger, slot, dry_run, force = CATCH_UP, missed_slot, False, False
        if not self.settings.enable_cron_jobs:
            return RunOutcome(task, None, RunStatus.DISABLED, trigger, slot, dry_run,
                              message="cron jobs are disabled (ENABLE_CRON_JOBS=false)")
        if until is None and self.settings.invocation_seconds is not None:
            until = time.monotonic() + self.settings.invocation_seconds
        try:
            return self._run(spec, now, slot, trigger, dry_run=dry_run, force=force,
                             until=until)
        except sa_exc.SQLAlchemyError as exc:
            # Raised only from the bookkeeping around the job: the job's own database
            # errors are retried and recorded inside _execute.
            if not is_database_outage(exc):
                raise
            problem = diagnose(exc)
            log.error("%s: %s not run (%s)", problem, task, type(exc).__name__)
            raise DatabaseUnavailable(problem) from exc

    # --- the run ------------------------------------------------------------------------
    def _run(self, spec: JobSpec, now: dt.datetime, slot: dt.datetime | None, trigger: str,
             *, dry_run: bool, force: bool, until: float | None) -> RunOutcome:
        run_id = uuid.uuid4()
        claimed = _Claimed(run_id, slot, now)
        if not dry_run:
            if slot is not None and not force:
                done = self._done_run(spec.name, slot)
                if done is not None:
                    self._watch()
                    return self._duplicate(spec, trigger, slot, done)
            refusal, claimed = self._claim(spec, run_id, now, slot, trigger, once=not force)
            if refusal is not None:
                self._watch()
                return refusal
            run_id, slot = claimed.run_id, claimed.slot
        else:
            with self.engine.begin() as conn:
                self._abandon_dead_runs(conn, spec, run_id, now, holds_lease=False)
                conn.execute(log_t.insert().values(
                    **self._running_row(spec, run_id, now, slot, trigger, dry_run=True)))
        heartbeat = Heartbeat(self.engine, spec.name, run_id, now,
                              interval=self.settings.heartbeat_interval,
                              dead_after=self.settings.dead_after, holds_lease=not dry_run)
        try:
            # A real run's lease is released in the transaction that closes its log row.
            with heartbeat:
                return self._execute(spec, claimed, now, trigger, dry_run=dry_run,
                                     force=force, until=until)
        except BaseException:
            if not dry_run:
                self._release(spec.name, run_id)
            raise

    def _execute(self, spec: JobSpec, claimed: _Claimed, now: dt.datetime, trigger: str, *,
                 dry_run: bool, force: bool, until: float | None) -> RunOutcome:
        # The `running` row was written with the claim (or, for a dry run, just before).
        run_id, slot = claimed.run_id, claimed.slot
        started = time.monotonic()
        deadline = now + spec.max_runtime
        hard_until = until  # the invocation's end: outbound calls end by then
        # A run made of chunks stops taking work before this invocation ends, or before the
        # job's max runtime when no invocation limit is set: it answers `partial` rather
        # than failing at the end of its time.
        end = started + spec.max_runtime.total_seconds()
        if until is not None:
            end = min(end, until)
        # What follows the job in this invocation: closing the row, the alerts.
        reserve = min(self.settings.alert_timeout, 0.1 * (end - started))
        until = end - max(reserve, 0.0)
        outcome = RunOutcome(spec.name, run_id, RunStatus.ERROR, trigger, slot, dry_run)
        attempt_errors: list[dict[str, Any]] = []
        base_ctx = JobContext(
            settings=self.settings, engine=self.engine, now=now, run_id=run_id,
            task=spec.name, slot=slot, dry_run=dry_run, force=force, trigger=trigger,
            deadline=deadline, log=logging.getLogger(f"app.jobs.{spec.name}"),
            until=until, origin=claimed.origin,
        )
        self._notify("run_started", spec, base_ctx)
        closed = False
        meter = usage.Meter()
        succeeded = 0  # the attempt that returned is not among attempt_errors
        try:
            base_ctx = replace(base_ctx, schema=self._preflight(spec))
            # A continued run has work planned: its precondition was asked at its start.
            skip = None if force or claimed.continued else self._nothing_to_do(spec, base_ctx)
            if skip is not None and not dry_run:
                outcome.status = RunStatus.SKIPPED
                outcome.message = f"skipped: {skip}"
                outcome.details = {"skipped": skip}
            else:
                with meter:
                    result = self._attempts(spec, base_ctx, attempt_errors, started,
                                            hard_until)
                succeeded = 1
                outcome.status = result.status
                outcome.records_processed = result.records_processed
                outcome.message = result.message or "done"
                outcome.details = result.details
                if skip is not None:  # a dry run shows the job's report, and the skip
                    outcome.details = {**result.details, "would_skip": skip}
        except JobRefused as exc:
            # Not retried, no traceback: the line says what to fix.
            outcome.status = RunStatus.ERROR
            outcome.message = self._redact(str(exc), hide_emails=True)[:1000]
            outcome.details = {**exc.details, "refused": True}
            log.error("run %s of %s refused: %s", run_id, spec.name, outcome.message)
        except JobAborted as exc:
            outcome.status = RunStatus.WARNING
            outcome.message = str(exc) or "stopped cleanly"
        except chunks.RunPaused as exc:
            done = exc.progress
            outcome.status = RunStatus.PARTIAL
            outcome.message = str(exc)
            outcome.records_processed = self._records_so_far(run_id)
            outcome.details = {"chunks_done": done.done, "chunks_total": done.total,
                               "chunks_left": done.left,
                               "continues": "the next call for this task and slot (a "
                               "redelivery, the crontab or workflow loop, an operator's run, "
                               "or any cron call's catch-up)"}
        except Exception as exc:
            outcome.status = RunStatus.ERROR
            outcome.message = f"failed after {len(attempt_errors)} attempt(s): " + (
                _error_summary(exc, self._redact))
            log.error("run %s of %s failed", run_id, spec.name, exc_info=exc)
        except BaseException as exc:  # interrupted (Ctrl-C, SIGTERM): close the row, re-raise
            outcome.status = RunStatus.ERROR
            outcome.message = f"interrupted: {type(exc).__name__}"
            outcome.attempts = max(len(attempt_errors), 1)
            outcome.duration_ms = int((time.monotonic() - started) * 1000)
            outcome.usage = meter.figures()
            self._close(outcome, attempt_errors)
            closed = True
            raise
        finally:
            if not closed:
                outcome.attempts = max(len(attempt_errors) + succeeded, 1)
                outcome.duration_ms = int((time.monotonic() - started) * 1000)
                outcome.usage = meter.figures()
                self._close(outcome, attempt_errors)
        if outcome.status in JUDGED and not dry_run:
            outcome.anomalies = mark_run(self.engine, spec.name, run_id)
        self._watch(None if dry_run else outcome)
        self._notify("run_finished", spec, outcome)
        log.info(
            "run finished",
            extra={"task": spec.name, "run_id": str(run_id), "status": outcome.status,
                   "duration_ms": outcome.duration_ms, "records": outcome.records_processed},
        )
        return outcome

    def _preflight(self, spec: JobSpec) -> JobCheck:
        """Can the job run here?  Raises JobRefused with the one line saying why not."""
        check = check_job(self.engine, self.settings, spec)
        refusal = check.refusal()
        if refusal is not None:
            raise JobRefused(refusal)
        return check

    def _nothing_to_do(self, spec: JobSpec, ctx: JobContext) -> str | None:
        """The job's precondition: why there is nothing to do, or None.  A check that fails
        lets the job run: the job knows better than its shortcut."""
        if spec.precondition is None:
            return None
        try:
            return spec.precondition(ctx)
        except Exception as exc:
            log.warning("precondition of %s failed (%s); running the job",
                        spec.name, _error_summary(exc, self._redact))
            return None

    def _attempts(self, spec: JobSpec, base_ctx: JobContext,
                  attempt_errors: list[dict[str, Any]], started: float,
                  hard_until: float | None) -> JobResult:
        budget_seconds = spec.max_runtime.total_seconds()
        if hard_until is not None:
            budget_seconds = min(budget_seconds, hard_until - started)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(spec.retry.attempts)
            | tenacity.stop_before_delay(budget_seconds),
            wait=tenacity.wait_random_exponential(
                multiplier=spec.retry.base_delay, max=spec.retry.max_delay
            ),
            retry=tenacity.retry_if_exception(is_transient),
            sleep=self.sleep,
            reraise=True,
        )
        for attempt in retrying:
            number = attempt.retry_state.attempt_number
            ctx = replace(base_ctx, attempt=number)
            self._record_attempt(base_ctx.run_id, number, attempt_errors)
            with attempt:
                try:
                    # Every outbound call of the job ends by the end of the run's budget.
                    with budget.limited(budget_seconds - (time.monotonic() - started)):
                        return spec.func(ctx)
                except chunks.RunPaused:
                    raise
                except Exception as exc:
                    attempt_errors.append({
                        "attempt": number,
                        "error": _error_summary(exc, self._redact),
                        "transient": is_transient(exc),
                        "at_ms": int((time.monotonic() - started) * 1000),
                    })
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _records_so_far(self, run_id: uuid.UUID) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(log_t.c.records_processed)
                                    .where(log_t.c.run_id == run_id)).scalar() or 0)

    # --- bookkeeping --------------------------------------------------------------------
    def _record_attempt(self, run_id: uuid.UUID, number: int,
                        attempt_errors: list[dict[str, Any]]) -> None:
        # Committed at once so an operator watching the log sees each attempt live.  The
        # first attempt was written with the row itself.
        if number == 1:
            return
        with self.engine.begin() as conn:
            conn.execute(
                log_t.update().where(log_t.c.run_id == run_id).values(
                    attempts=number,
                    error_details={"attempts": attempt_errors} if attempt_errors else None,
                    message=f"running (attempt {number})",
                )
            )

    def _close(self, outcome: RunOutcome, attempt_errors: list[dict[str, Any]]) -> None:
        ended = self.clock()
        error_details: dict[str, Any] | None = None
        if attempt_errors:
            error_details = {"attempts": attempt_errors}
        if outcome.status == RunStatus.ERROR and outcome.run_id is not None:
            error_details = {**(error_details or {}), "error": outcome.message}
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    log_t.update().where(log_t.c.run_id == outcome.run_id).values(
                        status=outcome.status, ended_at=ended, message=outcome.message,
                        records_processed=outcome.records_processed,
                        attempts=outcome.attempts, error_details=error_details,
                        details=outcome.details or None, resource_usage=outcome.usage,
                    )
                )
                if not outcome.dry_run and outcome.run_id is not None:
                    conn.execute(self._release_stmt(outcome.task, outcome.run_id))
        except sa_exc.SQLAlchemyError:
            # The row stays `running`; the next run closes it as abandoned.
            log.error("could not close log row %s:\n%s", outcome.run_id,
                      traceback.format_exc(limit=3))
            if not outcome.dry_run and outcome.run_id is not None:
                self._release(outcome.task, outcome.run_id)

    def _watch(self, outcome: RunOutcome | None = None) -> None:
        """Alert the changes of every job's incident state (app/observe/alerts.py): after
        each call, also one that ran nothing, so overdue and stuck jobs are seen too.  What
        the alerts about the run's own job did goes on its log row."""
        # Their own short budget: a dead mail server delays the answer by at most this.
        with budget.limited(self.settings.alert_timeout):
            sent = alerts.check(self.settings, self.engine, self.jobs, self.clock())
        if outcome is not None and outcome.task in sent:
            outcome.details["alerts"] = sent[outcome.task]
            self._record_details(outcome)

    def _record_details(self, outcome: RunOutcome) -> None:
        """Details learnt after the row was closed (what the alerts did)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(log_t.update().where(log_t.c.run_id == outcome.run_id)
                             .values(details=outcome.details or None))
        except sa_exc.SQLAlchemyError as exc:
            log.warning("could not record the alerts of run %s: %s", outcome.run_id,
                        type(exc).__name__)

    @staticmethod
    def _running_row(spec: JobSpec, run_id: uuid.UUID, now: dt.datetime,
                     slot: dt.datetime | None, trigger: str, *, dry_run: bool
                     ) -> dict[str, Any]:
        return {"run_id": run_id, "job_name": spec.name, "slot": slot, "trigger": trigger,
                "started_at": now, "heartbeat_at": now, "status": RunStatus.RUNNING,
                "records_processed": 0,
                "attempts": 1, "dry_run": dry_run, "message": "running (attempt 1)"}

    def _claim(self, spec: JobSpec, run_id: uuid.UUID, now: dt.datetime,
               slot: dt.datetime | None, trigger: str, *, once: bool = True
               ) -> tuple[RunOutcome | None, _Claimed]:
        """Take the task's lease and write the run's `running` row in one transaction.

        Whoever finds the lease taken therefore also finds the run holding it, and answers
        a delivery of the same slot as a duplicate naming that run (never a 409 naming no
        run).  Returns (None, the run claimed) once claimed, else (the answer to give, -).
        The run claimed is the slot's `partial` run when there is one: the call continues it
        under its own id and row, rather than starting a second run of the slot.  A holder
        that let go between our attempt and our read is tried again.  `once=False` (a forced
        backfill) runs a slot that already ran.
        """
        fresh = _Claimed(run_id, slot, now)
        for _attempt in range(3):
            with self.engine.connect() as conn:
                settled, outcome, claimed = self._claim_once(conn, spec, run_id, now, slot,
                                                             trigger, once=once)
            if settled:
                return outcome, claimed or fresh
        return RunOutcome(spec.name, None, RunStatus.RUNNING, trigger, slot,
                          message=f"{spec.name} is being claimed by another run; retry later"
                          ), fresh

    def _claim_once(self, conn: sa.Connection, spec: JobSpec, run_id: uuid.UUID,
                    now: dt.datetime, slot: dt.datetime | None, trigger: str, *,
                    once: bool = True
                    ) -> tuple[bool, RunOutcome | None, _Claimed | None]:
        """(settled, refusal, run continued): not settled when the holder let go before we
        could read it."""
        with conn.begin() as transaction:
            conn.execute(
                upsert(conn.dialect, lease_t).values(task=spec.name).on_conflict_do_nothing()
            )
            # On PostgreSQL a concurrent claimer waits on the row lock here, then sees the
            # new holder; on SQLite the write lock serialises the whole transaction.
            claimed = conn.execute(
                lease_t.update()
                .where(lease_t.c.task == spec.name)
                .where(sa.or_(lease_t.c.holder.is_(None), lease_t.c.expires_at <= now))
                .values(holder=run_id, acquired_at=now, expires_at=now + self._dead_after)
            ).rowcount == 1
            if not claimed:
                holder = conn.execute(
                    sa.select(lease_t.c.holder, log_t.c.slot)
                    .select_from(lease_t.outerjoin(log_t, log_t.c.run_id == lease_t.c.holder))
                    .where(lease_t.c.task == spec.name)
                ).first()
                transaction.rollback()
                if holder is None or holder.holder is None:
                    return False, None, None
                return True, self._busy(spec, trigger, slot, holder.holder, holder.slot), None
            # Under the lease this answer is final: the slot may have finished between the
            # first check and the claim.
            done = self._done_run(spec.name, slot, conn) if slot is not None and once else None
            if done is None:
                partial = self._continue_partial(conn, spec, run_id, now, slot, trigger)
                if partial is not None:
                    return True, None, partial
            if slot is not None and once:
                if done is None and trigger == CATCH_UP:
                    # A catch-up is settled by any real run since the slot, failed or not:
                    # it heals a missing delivery, and never repeats a run.
                    done = self._ran_since(spec.name, slot, conn)
                if done is not None:
                    transaction.rollback()  # the claim never happened
                    return True, self._duplicate(spec, trigger, slot, done), None
            # Closes the rows of runs whose holder died, in the same transaction.
            dead = self._abandon_dead_runs(conn, spec, run_id, now, holds_lease=True)
            self._close_stale_partials(conn, spec, run_id, now, slot)
            conn.execute(log_t.insert().values(
                **self._running_row(spec, run_id, now, slot, trigger, dry_run=False)))
            # The dead run of the same slot leaves its chunks to this one: what it finished
            # is not done again (app/core/chunks.py).
            for dead_id, dead_slot in dead:
                if dead_slot == slot and chunks.inherit(conn, dead_id, run_id):
                    break
        return True, None, None

    def _continue_partial(self, conn: sa.Connection, spec: JobSpec, lease_id: uuid.UUID,
                          now: dt.datetime, slot: dt.datetime | None, trigger: str
                          ) -> _Claimed | None:
        """Under the lease just taken (held as `lease_id`): the `partial` run this call
        continues, now `running` again and holding the lease; None when there is none.

        A scheduled call continues its slot's partial run; an operator's call (no slot) the
        task's latest one."""
        query = (sa.select(log_t.c.run_id, log_t.c.slot, log_t.c.started_at)
                 .where(log_t.c.job_name == spec.name, log_t.c.status == RunStatus.PARTIAL,
                        log_t.c.dry_run.is_(False))
                 .order_by(log_t.c.started_at.desc()).limit(1))
        if slot is not None:
            query = query.where(log_t.c.slot == slot)
        row = conn.execute(query).first()
        if row is None:
            return None
        conn.execute(lease_t.update().where(lease_t.c.task == spec.name,
                                            lease_t.c.holder == lease_id)
                     .values(holder=row.run_id))
        conn.execute(log_t.update().where(log_t.c.run_id == row.run_id).values(
            status=RunStatus.RUNNING, heartbeat_at=now, resumed_at=now, ended_at=None,
            attempts=1,
            message=f"running: continued by a {trigger} call"))
        # Any other run still `running` is dead: this call holds the lease.
        self._abandon_dead_runs(conn, spec, row.run_id, now, holds_lease=True)
        log.info("run %s of %s continued by a %s call", row.run_id, spec.name, trigger)
        return _Claimed(row.run_id, row.slot, row.started_at, continued=True)

    def _close_stale_partials(self, conn: sa.Connection, spec: JobSpec, run_id: uuid.UUID,
                              now: dt.datetime, slot: dt.datetime | None) -> None:
        """A new run of another slot starts while an older slot's run is still `partial`:
        that one will never be continued.  Closed as abandoned, saying so (a failure to
        finish its slot, which /health and the alerts report)."""
        when = slot.isoformat() if slot is not None else "an operator's run"
        conn.execute(
            log_t.update()
            .where(log_t.c.job_name == spec.name, log_t.c.status == RunStatus.PARTIAL,
                   log_t.c.dry_run.is_(False))
            .values(status=RunStatus.ABANDONED, ended_at=now,
                    message=f"abandoned: left partial, not continued before run {run_id} "
                    f"({when}) took the task over"))

    @staticmethod
    def _release_stmt(task: str, run_id: uuid.UUID) -> sa.Update:
        return (
            lease_t.update()
            .where(lease_t.c.task == task, lease_t.c.holder == run_id)
            .values(holder=None, expires_at=None)
        )

    def _release(self, task: str, run_id: uuid.UUID) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(self._release_stmt(task, run_id))
        except sa_exc.SQLAlchemyError:
            log.error("could not release lease of %s; it expires on its own", task)

    @property
    def _dead_after(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.dead_after)

    def _abandon_dead_runs(self, conn: sa.Connection, spec: JobSpec, run_id: uuid.UUID,
                           now: dt.datetime, *, holds_lease: bool
                           ) -> list[tuple[uuid.UUID, dt.datetime | None]]:
        """Close `running` rows whose process died, each saying what happened.

        Holding the lease proves every other real run of the task is dead (it stopped
        renewing the lease).  Dry runs take no lease: those whose heartbeat stopped
        DEAD_AFTER ago are dead, and those without one (written before heartbeats) once
        past max runtime.
        """
        heartbeat = log_t.c.heartbeat_at
        stale_dry = sa.and_(log_t.c.dry_run.is_(True), sa.or_(
            heartbeat <= now - self._dead_after,
            sa.and_(heartbeat.is_(None), log_t.c.started_at <= now - spec.max_runtime)))
        condition = log_t.c.dry_run.is_(False) if holds_lease else sa.false()
        dead = conn.execute(
            sa.select(log_t.c.run_id, log_t.c.heartbeat_at, log_t.c.dry_run, log_t.c.slot)
            .where(log_t.c.job_name == spec.name, log_t.c.status == RunStatus.RUNNING,
                   log_t.c.run_id != run_id, sa.or_(condition, stale_dry))
        ).all()
        for row in dead:
            if row.heartbeat_at is None:
                message = ("abandoned: the process running it stopped before it finished "
                           "(lease expired)")
            else:
                message = (f"abandoned: the process running it stopped renewing its heartbeat "
                           f"at {row.heartbeat_at.isoformat(timespec='seconds')} (dead after "
                           f"{self.settings.dead_after:g} s); found by run {run_id}"
                           + ("" if row.dry_run else ", which takes up its work"))
            conn.execute(
                log_t.update()
                .where(log_t.c.run_id == row.run_id, log_t.c.status == RunStatus.RUNNING)
                .values(status=RunStatus.ABANDONED, ended_at=now, message=message)
            )
            log.warning("run %s of %s %s", row.run_id, spec.name, message)
        return [(row.run_id, row.slot) for row in dead if not row.dry_run]

    def _done_run(self, task: str, slot: dt.datetime, conn: sa.Connection | None = None
                  ) -> tuple[uuid.UUID, str] | None:
        query = (
            sa.select(log_t.c.run_id, log_t.c.status)
            .where(log_t.c.job_name == task, log_t.c.slot == slot,
                   log_t.c.status.in_(DONE), log_t.c.dry_run.is_(False))
            .order_by(log_t.c.started_at)
            .limit(1)
        )
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.engine.connect() as own:
                row = own.execute(query).first()
        return (row[0], row[1]) if row else None

    @staticmethod
    def _ran_since(task: str, slot: dt.datetime, conn: sa.Connection
                   ) -> tuple[uuid.UUID, str] | None:
        """The first real run of `task` started at or after `slot`, whatever its end."""
        row = conn.execute(
            sa.select(log_t.c.run_id, log_t.c.status)
            .where(log_t.c.job_name == task, log_t.c.started_at >= slot,
                   log_t.c.dry_run.is_(False))
            .order_by(log_t.c.started_at)
            .limit(1)
        ).first()
        return (row[0], row[1]) if row else None

    def _duplicate(self, spec: JobSpec, trigger: str, slot: dt.datetime,
                   done: tuple[uuid.UUID, str]) -> RunOutcome:
        return RunOutcome(
            spec.name, done[0], RunStatus.DUPLICATE, trigger, slot,
            message=f"slot {slot.isoformat()} already ran (run {done[0]}, {done[1]}); "
            "nothing done",
        )

    @staticmethod
    def _busy(spec: JobSpec, trigger: str, slot: dt.datetime | None, holder: uuid.UUID,
              holder_slot: dt.datetime | None) -> RunOutcome:
        """The lease is held by run `holder`: the same slot is a duplicate (200), anything
        else (another slot, a manual run) collides with it (409)."""
        if slot is not None and holder_slot == slot:
            return RunOutcome(spec.name, holder, RunStatus.DUPLICATE, trigger, slot,
                              message=f"slot {slot.isoformat()} is being run now by run "
                              f"{holder}; nothing done")
        return RunOutcome(spec.name, holder, RunStatus.RUNNING, trigger, slot,
                          message=f"{spec.name} is already running (run {holder})")

    def _notify(self, hook: str, spec: JobSpec, arg: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(spec, arg)
            except Exception:  # monitoring must never break a run
                log.warning("observer %s.%s failed", type(observer).__name__, hook,
                            exc_info=True)
