"""Put back what one run of subscription-sync or subscription-expiry changed.

Neither job deletes a row: each rewrites columns of `user_subscriptions` and records, per
row changed, a `subscription_history` row with the run's id and the values before and
after (`details.before` / `details.after`, `details.row_id`).  `voyagesmart-cron restore
<run-id>` calls the job's `restore`, which reads those history rows and sets each
subscription back to its `before` values, but only where the row still holds exactly what
the run wrote: a row changed since (a webhook, a later run, an admin) is left as it is and
reported (`left`, and the CLI exits 1).  Each restored row gets an `admin_update` history
row (the app's name for a change made by hand) naming the run it undid, so the reports see
the subscription paying again from that moment.  Restoring twice restores nothing the
second time.

Set-based: the run's history rows are streamed, and each batch is one read of the current
rows and one guarded `UPDATE` (executemany) plus one history `INSERT`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from app.core.batching import keys_in, stream_rows
from app.db import new_uuid, table_of
from app.models import CronJobLog, SubscriptionHistory, UserSubscription

subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)
log_t = table_of(CronJobLog)

FIELDS = ("tier", "status", "current_period_end", "cancel_at_period_end",
          "stripe_subscription_id")
RESTORE_SOURCE = "voyagesmart-cron restore"
_BATCH = 1000
_SAMPLES = 20


def _value(name: str, raw: Any) -> Any:
    """A column value from its JSON form in `details`."""
    if raw is None:
        return None
    if name == "current_period_end":
        moment = dt.datetime.fromisoformat(str(raw))
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if name == "cancel_at_period_end":
        return bool(raw)
    return str(raw)


def _same(name: str, current: Any, expected: Any) -> bool:
    if name == "current_period_end" and current is not None and expected is not None:
        return int(current.timestamp()) == int(expected.timestamp())
    if name == "cancel_at_period_end":
        return bool(current) == bool(expected)
    return bool(current == expected)


def _change(details: Any) -> tuple[uuid.UUID, dict[str, Any], dict[str, Any]] | None:
    """(row id, values the run wrote, values before it) from one history row's details."""
    if not isinstance(details, dict):
        return None
    before, after = details.get("before"), details.get("after")
    if not isinstance(before, dict) or not isinstance(after, dict) or not after:
        return None
    try:
        row_id = uuid.UUID(str(details.get("row_id")))
    except ValueError:
        return None
    names = [name for name in FIELDS if name in after]
    return (row_id, {n: _value(n, after[n]) for n in names},
            {n: _value(n, before.get(n)) for n in names})


def restore_run(engine: Engine, run_id: uuid.UUID, now: dt.datetime, dry_run: bool, *,
                job: str) -> dict[str, Any]:
    """Set back the subscriptions run `run_id` of `job` changed; figures for the operator."""
    with engine.connect() as conn:
        started = conn.scalar(sa.select(log_t.c.started_at).where(log_t.c.run_id == run_id))
    figures: dict[str, Any] = {"subscriptions_restored": 0, "left": 0, "left_samples": []}
    if started is None:
        return figures
    events = (sa.select(history.c.user_id, history.c.stripe_customer_id, history.c.details)
              .where(history.c.created_at == started)
              .order_by(history.c.id))
    for chunk in stream_rows(engine, events, _BATCH):
        mine = [(row, change) for row in chunk
                if isinstance(row.details, dict) and row.details.get("run_id") == str(run_id)
                and row.details.get("source") != RESTORE_SOURCE
                and (change := _change(row.details)) is not None]
        if mine:
            _restore_batch(engine, mine, started, now, dry_run, run_id, job, figures)
    if dry_run:
        figures["would_restore"] = figures.pop("subscriptions_restored")
    return figures


def _restore_batch(engine: Engine,
                   mine: Sequence[tuple[Row[Any], tuple[uuid.UUID, dict[str, Any],
                                                        dict[str, Any]]]],
                   started: dt.datetime, now: dt.datetime, dry_run: bool,
                   run_id: uuid.UUID, job: str, figures: dict[str, Any]) -> None:
    ids = [change[0] for _, change in mine]
    with engine.begin() as conn:
        current = {row.id: row for row in conn.execute(
            sa.select(subs).where(keys_in(subs.c.id, ids, conn.dialect)))}
        ready = []
        for event, (row_id, after, before) in mine:
            row = current.get(row_id)
            if row is not None and row.updated_at == started and all(
                    _same(n, row._mapping[n], v) for n, v in after.items()):
                ready.append((event, row, after, before))
            else:
                figures["left"] += 1
                if len(figures["left_samples"]) < _SAMPLES:
                    figures["left_samples"].append(
                        f"subscription row {row_id}: changed since the run")
        if dry_run or not ready:
            figures["subscriptions_restored"] += len(ready)
            return
        # One statement per column set: sync rows carry the fields they changed only.
        by_names: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for item in ready:
            by_names.setdefault(tuple(item[2]), []).append(item)
        for names, items in by_names.items():
            conn.execute(
                subs.update()
                .where(subs.c.id == sa.bindparam("k_id", type_=subs.c.id.type),
                       subs.c.updated_at == sa.bindparam("k_seen", type_=subs.c.updated_at.type),
                       *[subs.c[n].is_not_distinct_from(
                           sa.bindparam(f"k_{n}", type_=subs.c[n].type)) for n in names])
                .values({**{n: sa.bindparam(f"v_{n}", type_=subs.c[n].type) for n in names},
                         "updated_at": now}),
                [{"k_id": row.id, "k_seen": started,
                  **{f"k_{n}": row._mapping[n] for n in names},
                  **{f"v_{n}": before[n] for n in names}} for _, row, _a, before in items])
        done = set(conn.scalars(sa.select(subs.c.id).where(
            keys_in(subs.c.id, [row.id for _, row, _a, _b in ready], conn.dialect),
            subs.c.updated_at == now)))
        restored = [item for item in ready if item[1].id in done]
        figures["left"] += len(ready) - len(restored)
        if restored:
            conn.execute(history.insert(), [_history(event, row, after, before, now, run_id, job)
                                            for event, row, after, before in restored])
        figures["subscriptions_restored"] += len(restored)


def _history(event: Row[Any], row: Row[Any], after: dict[str, Any], before: dict[str, Any],
             now: dt.datetime, run_id: uuid.UUID, job: str) -> dict[str, Any]:
    state = {**{n: row._mapping[n] for n in FIELDS}, **before}

    def as_json(values: dict[str, Any]) -> dict[str, Any]:
        return {n: v.isoformat() if isinstance(v, dt.datetime) else v
                for n, v in values.items()}

    return {
        "id": new_uuid(), "user_id": row.user_id, "event_type": "admin_update",
        "tier": state["tier"], "status": state["status"],
        "stripe_subscription_id": state["stripe_subscription_id"],
        "stripe_customer_id": row.stripe_customer_id or event.stripe_customer_id,
        "event_timestamp": now, "created_at": now,
        "details": {"source": RESTORE_SOURCE, "restores_run": str(run_id), "job": job,
                    "row_id": str(row.id), "before": as_json(after),
                    "after": as_json(before)},
    }
