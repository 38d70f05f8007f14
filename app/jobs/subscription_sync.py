"""subscription-sync: the safety net behind Stripe's webhooks.

1. Select the local subscriptions Stripe may still change: every non-terminal status
   (active, trialing, past_due, unpaid, incomplete, paused) and those canceled or expired
   within `SUBSCRIPTION_SYNC_LOOKBACK_DAYS`.
2. Fetch their state from Stripe (`app.stripe_gateway`: rate-limited, SDK retries, 429
   backoff), by the cheaper of two strategies:
   - *list*: page through `subscriptions.list` (100 per call; it returns every
     non-canceled subscription).  Webhooks keep Stripe's live set and ours close, so this
     costs about live/100 calls, and stops as soon as every live candidate was seen.  Only
     what the list cannot show (canceled in Stripe, missing, our recently canceled rows)
     is then retrieved one by one.
   - *retrieve*: one call per candidate, from a bounded thread pool under the rate limit.
   `auto` lists once the live candidates fill more than one page, where listing must cost
   fewer calls; `retrieve` suits an account that also bills other products.
3. Compare status, tier (price, then plan, then product id through `STRIPE_TIER_MAP`),
   the billing period (read from the subscription item first, then the subscription: both
   API shapes exist), cancel_at_period_end, canceled_at and the trial window.  Drifted
   rows are updated in batches, each row only if no webhook touched it since it was read,
   with one `subscription_history` row (`sync_updated`, before and after in `details`).
4. A subscription Stripe no longer knows (404) is marked canceled, with history; never
   deleted.  Any other failure is counted and named, and the others carry on: the run
   ends as `warning`.  If everything fails, Stripe is down: the run is retried later.
5. Report checked, changed by field, missing in Stripe, failed and API calls.

A dry run fetches and compares but writes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Row

from app.batching import stream_rows
from app.db import UTCDateTime, new_uuid, table_of
from app.jobs.context import JobAborted, JobContext, JobResult, TransientError
from app.models import Subscription, SubscriptionHistory
from app.stripe_gateway import PAGE_SIZE, StripeGateway, is_missing
from app.subscription_facts import TERMINAL_STATUSES

subs = table_of(Subscription)
history = table_of(SubscriptionHistory)

FIELDS = ("status", "tier", "current_period_start", "current_period_end",
          "cancel_at_period_end", "canceled_at", "trial_start", "trial_end")
_TIMES = frozenset({"current_period_start", "current_period_end", "canceled_at",
                    "trial_start", "trial_end"})
_CHUNK = 500  # candidates fetched per round of the thread pool
_NAMED_FAILURES = 50
_MIN_FAILURES_FOR_OUTAGE = 10


# --- Stripe object -> local columns (pure) ----------------------------------------------
def _epoch(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(value), dt.UTC) if value is not None else None


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


def _first_item(obj: dict[str, Any]) -> dict[str, Any]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return data[0] if data else {}


def billing_ids(obj: dict[str, Any]) -> list[str]:
    """Price, plan and product ids of a subscription, most specific first."""
    item = _first_item(obj)
    price = item.get("price") or {}
    plan = item.get("plan") or obj.get("plan") or {}
    ids = [_id(price), _id(plan), _id(price.get("product")), _id(plan.get("product"))]
    return [i for i in ids if i]


def stripe_state(obj: dict[str, Any], tier_map: dict[str, str]) -> dict[str, Any]:
    """Local column values for a Stripe subscription; `tier` is None when unmapped."""
    item = _first_item(obj)

    def period(name: str) -> dt.datetime | None:
        # Since API 2025-03-31 the period lives on the item; older shapes on the object.
        return _epoch(item.get(name) if item.get(name) is not None else obj.get(name))

    tier = next((tier_map[i] for i in billing_ids(obj) if i in tier_map), None)
    return {
        "status": obj.get("status"),
        "tier": tier,
        "current_period_start": period("current_period_start"),
        "current_period_end": period("current_period_end"),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "canceled_at": _epoch(obj.get("canceled_at")),
        "trial_start": _epoch(obj.get("trial_start")),
        "trial_end": _epoch(obj.get("trial_end")),
    }


def _same(name: str, local: Any, remote: Any) -> bool:
    if name in _TIMES and local is not None and remote is not None:
        # Stripe has whole seconds; a webhook may have stored milliseconds.
        return int(local.timestamp()) == int(remote.timestamp())
    if name == "cancel_at_period_end":
        return bool(local) == bool(remote)
    return bool(local == remote)


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


# --- the run ----------------------------------------------------------------------------
@dataclass
class _Change:
    row: Row[Any]
    after: dict[str, Any]  # every FIELD, new values
    changed: list[str]
    reason: str


@dataclass
class _Tally:
    checked: int = 0
    fetched: int = 0
    changed: int = 0
    by_field: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    marked_canceled: int = 0
    skipped_concurrent: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    unmapped: set[str] = field(default_factory=set)


class _Sync:
    def __init__(self, ctx: JobContext, gateway: StripeGateway) -> None:
        self.ctx = ctx
        self.gateway = gateway
        self.tally = _Tally()
        self.pending: list[_Change] = []
        self.started = time.monotonic()
        self.batch = ctx.settings.batch_size

    # candidates
    def _candidates(self) -> sa.Select[Any]:
        cutoff = self.ctx.now - dt.timedelta(days=self.ctx.settings.subscription_sync_lookback_days)
        recent = sa.func.coalesce(subs.c.canceled_at, subs.c.updated_at) >= cutoff
        return (
            sa.select(subs.c.id, subs.c.user_id, subs.c.stripe_subscription_id,
                      subs.c.stripe_customer_id, subs.c.updated_at,
                      *[subs.c[name] for name in FIELDS])
            .where(subs.c.stripe_subscription_id.is_not(None),
                   sa.or_(subs.c.status.not_in(TERMINAL_STATUSES), recent))
            .order_by(subs.c.id)
        )

    def strategy(self) -> str:
        chosen = self.ctx.settings.stripe_sync_strategy
        if chosen != "auto":
            return chosen
        with self.ctx.engine.connect() as conn:
            live = conn.scalar(sa.select(sa.func.count()).select_from(
                self._candidates().where(subs.c.status.not_in(TERMINAL_STATUSES)).subquery()))
        return "list" if int(live or 0) > PAGE_SIZE else "retrieve"

    def run(self, strategy: str) -> None:
        if strategy == "list":
            self._run_list()
        else:
            for chunk in stream_rows(self.ctx.engine, self._candidates(), _CHUNK):
                self._retrieve(chunk)
        self._flush()

    def _run_list(self) -> None:
        live: dict[str, Row[Any]] = {}
        leftovers: list[Row[Any]] = []
        for chunk in stream_rows(self.ctx.engine, self._candidates(), _CHUNK):
            for row in chunk:
                if row.status in TERMINAL_STATUSES:
                    leftovers.append(row)
                else:
                    live[row.stripe_subscription_id] = row
        cursor: str | None = None
        while live:
            self._check_time()
            page, more = self.gateway.list_subscriptions(cursor)
            for obj in page:
                match = live.pop(obj["id"]) if obj["id"] in live else None
                if match is not None:
                    self.tally.checked += 1
                    self.tally.fetched += 1
                    self._compare(match, obj)
            if not more or not page:
                break
            cursor = page[-1]["id"]
        # Not in the live list: canceled in Stripe, unknown to it, or canceled here.
        leftovers.extend(live.values())
        for start in range(0, len(leftovers), _CHUNK):
            self._retrieve(leftovers[start:start + _CHUNK])

    def _retrieve(self, rows: Sequence[Row[Any]]) -> None:
        self._check_time()

        def fetch(row: Row[Any]) -> tuple[Row[Any], dict[str, Any] | None, Exception | None]:
            try:
                return row, self.gateway.retrieve_subscription(row.stripe_subscription_id), None
            except (stripe.AuthenticationError, stripe.PermissionError):
                raise  # the key is wrong: every call would fail the same way
            except stripe.StripeError as exc:
                return row, None, exc

        workers = min(self.ctx.settings.stripe_concurrency, max(1, len(rows)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stripe") as pool:
            for row, obj, exc in pool.map(fetch, rows):
                self.tally.checked += 1
                if obj is not None:
                    self.tally.fetched += 1
                    self._compare(row, obj)
                elif exc is not None and is_missing(exc):
                    self.tally.missing += 1
                    self._missing(row)
                elif exc is not None:
                    self._failed(row, exc)
        t = self.tally
        if len(t.failures) >= _MIN_FAILURES_FOR_OUTAGE and t.fetched == 0 and t.missing == 0:
            raise TransientError(f"Stripe failed {len(t.failures)} calls and answered none: "
                                 + t.failures[0]["error"])

    def _failed(self, row: Row[Any], exc: Exception) -> None:
        message = str(getattr(exc, "user_message", None) or exc).strip().splitlines()
        summary = f"{type(exc).__name__}: {message[0] if message else ''}".strip(": ")
        self.tally.failures.append({"stripe_subscription_id": row.stripe_subscription_id,
                                    "error": summary[:200]})
        self.ctx.log.warning("subscription %s not synced: %s", row.stripe_subscription_id,
                             summary)

    def _check_time(self) -> None:
        if self.ctx.deadline is None:
            return
        elapsed = dt.timedelta(seconds=time.monotonic() - self.started)
        left = self.ctx.seconds_left(self.ctx.now + elapsed)
        if left is not None and left < 30:
            self._flush()
            raise JobAborted(f"time budget nearly spent after checking {self.tally.checked} "
                             f"subscriptions; the rest waits for the next run")

    # comparison
    def _compare(self, row: Row[Any], obj: dict[str, Any]) -> None:
        remote = stripe_state(obj, self.ctx.settings.stripe_tier_map)
        if remote["tier"] is None:
            ids = billing_ids(obj)
            self.tally.unmapped.add(ids[0] if ids else "(no price or plan)")
            remote["tier"] = row.tier  # unmapped: keep ours rather than guess
        changed = [name for name in FIELDS if not _same(name, row._mapping[name], remote[name])]
        if changed:
            self._queue(_Change(row, remote, changed, "drift"))

    def _missing(self, row: Row[Any]) -> None:
        after = {name: row._mapping[name] for name in FIELDS}
        after["status"] = "canceled"
        after["canceled_at"] = row.canceled_at or self.ctx.now
        changed = [name for name in ("status", "canceled_at")
                   if not _same(name, row._mapping[name], after[name])]
        if changed:
            self._queue(_Change(row, after, changed, "missing_in_stripe"))

    def _queue(self, change: _Change) -> None:
        if self.ctx.dry_run:
            self.tally.changed += 1
            self.tally.by_field.update(change.changed)
            self.tally.marked_canceled += change.reason == "missing_in_stripe"
            return
        self.pending.append(change)
        if len(self.pending) >= self.batch:
            self._flush()

    # writes
    def _flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        now = self.ctx.now
        update = (
            subs.update()
            .where(subs.c.id == sa.bindparam("k_id", type_=subs.c.id.type),
                   subs.c.updated_at.is_not_distinct_from(
                       sa.bindparam("k_seen", type_=UTCDateTime())))
            .values({**{name: sa.bindparam(f"v_{name}", type_=subs.c[name].type)
                        for name in FIELDS}, "updated_at": now})
        )
        params = [{"k_id": c.row.id, "k_seen": c.row.updated_at,
                   **{f"v_{name}": c.after[name] for name in FIELDS}} for c in batch]
        with self.ctx.engine.begin() as conn:
            conn.execute(update, params)
            # Rows a webhook rewrote after we read them kept their newer updated_at.
            written = set(conn.scalars(sa.select(subs.c.id).where(
                subs.c.id.in_([c.row.id for c in batch]), subs.c.updated_at == now)))
            done = [c for c in batch if c.row.id in written]
            if done:
                conn.execute(history.insert(), [self._history(c) for c in done])
        self.tally.skipped_concurrent += len(batch) - len(done)
        for change in done:
            self.tally.changed += 1
            self.tally.by_field.update(change.changed)
            self.tally.marked_canceled += change.reason == "missing_in_stripe"

    def _history(self, change: _Change) -> dict[str, Any]:
        row = change.row
        return {
            "id": new_uuid(),
            "user_id": row.user_id,
            "event_type": "sync_updated",
            "tier": change.after["tier"],
            "status": change.after["status"],
            "stripe_subscription_id": row.stripe_subscription_id,
            "stripe_customer_id": row.stripe_customer_id,
            "event_timestamp": self.ctx.now,
            "created_at": self.ctx.now,
            "details": {
                "source": "subscription-sync",
                "run_id": str(self.ctx.run_id),
                "reason": change.reason,
                "changed": change.changed,
                "before": {name: _json(row._mapping[name]) for name in change.changed},
                "after": {name: _json(change.after[name]) for name in change.changed},
            },
        }


def _describe(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts)


def run(ctx: JobContext) -> JobResult:
    with StripeGateway(ctx.settings) as gateway:
        sync = _Sync(ctx, gateway)
        strategy = sync.strategy()
        sync.run(strategy)
        t = sync.tally
        api_calls = gateway.requests
        rate_limited = gateway.rate_limited
    verb = "would change" if ctx.dry_run else "changed"
    message = (
        f"checked {t.checked}: {verb} {t.changed}"
        + (f" ({_describe(sorted(t.by_field.items()))})" if t.by_field else "")
        + f", {t.missing} missing in Stripe, {len(t.failures)} failed; "
        f"{api_calls} API calls ({strategy})"
    )
    if t.failures:
        names = ", ".join(f["stripe_subscription_id"] for f in t.failures[:5])
        more = f" and {len(t.failures) - 5} more" if len(t.failures) > 5 else ""
        message += f"; failed: {names}{more}"
    details = {
        "strategy": strategy,
        "dry_run": ctx.dry_run,
        "checked": t.checked,
        "changed": t.changed,
        "changed_by_field": dict(sorted(t.by_field.items())),
        "missing_in_stripe": t.missing,
        "marked_canceled": t.marked_canceled,
        "failed": len(t.failures),
        "failures": t.failures[:_NAMED_FAILURES],
        "skipped_concurrent": t.skipped_concurrent,
        "unmapped_tier_ids": sorted(t.unmapped)[:_NAMED_FAILURES],
        "api_calls": api_calls,
        "rate_limited_retries": rate_limited,
        "lookback_days": ctx.settings.subscription_sync_lookback_days,
    }
    return JobResult(records_processed=t.changed, message=message,
                     status="warning" if t.failures else "success", details=details)
