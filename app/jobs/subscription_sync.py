"""subscription-sync: the safety net behind Stripe's webhooks, on `user_subscriptions`.

Only rows with a `stripe_subscription_id` are Stripe's business: the sign-up trigger's
premium year and promo-code tiers have none and are never read or written here.

1. Select those rows: every `active` one, and the others updated within
   `SUBSCRIPTION_SYNC_LOOKBACK_DAYS`.
2. Fetch their state from Stripe (`app.stripe_gateway`: rate-limited, SDK retries, 429
   backoff), by the cheaper of two strategies:
   - *list*: page through `subscriptions.list` (100 per call; it returns every
     non-canceled subscription), stopping as soon as every active row was seen; only what
     the list cannot show (canceled in Stripe, missing, our inactive rows) is then
     retrieved one by one.
   - *retrieve*: one call per row, from a bounded thread pool under the rate limit.
   `auto` lists once the active rows fill more than one page.
3. Compare what the app stores: the tier (price, then plan, then product id through
   `STRIPE_TIER_MAP`; an unmapped id keeps ours), the status mapped into the values the
   table's CHECK admits (`STATUS_MAP`: `trialing`/`past_due` are `active`, `unpaid`/
   `incomplete`/`paused` are `inactive`; an unknown status keeps ours and is reported: a
   value the CHECK rejects is never written), `current_period_end` (from the subscription
   item first, then the subscription: both API shapes exist) and `cancel_at_period_end`.
   Drifted rows are updated in batches, each only if no webhook touched it since it was
   read, with one history row named as the app names it: `subscription_created` (what the
   app's webhook records for every subscription update).
4. A subscription Stripe canceled, or no longer knows (404), gets what the app's
   `customer.subscription.deleted` handler writes: tier `free`, status `inactive`, no
   Stripe subscription id, and a `subscription_deleted` history row.  Any other failure is
   counted and named, and the others carry on: the run ends as `warning`.  If everything
   fails, Stripe is down: the run is retried later.
5. Report checked, changed by field, deleted, failed and API calls.

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
from app.models import SubscriptionHistory, UserSubscription
from app.models.voyagesmart import SUBSCRIPTION_STATUSES
from app.stripe_gateway import PAGE_SIZE, StripeGateway, is_missing

subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)

FIELDS = ("status", "tier", "current_period_end", "cancel_at_period_end",
          "stripe_subscription_id")
_TIMES = frozenset({"current_period_end"})
# Stripe's subscription statuses -> the values user_subscriptions.status admits.
STATUS_MAP = {
    "active": "active", "trialing": "active", "past_due": "active",
    "unpaid": "inactive", "incomplete": "inactive", "paused": "inactive",
}
ENDED = frozenset({"canceled", "incomplete_expired"})  # the app's `deleted` transition
assert set(STATUS_MAP.values()) <= set(SUBSCRIPTION_STATUSES)
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
    """Local column values for a Stripe subscription; `tier` is None when unmapped and
    `status` None when Stripe's status has no local equivalent."""
    item = _first_item(obj)
    end = item.get("current_period_end")
    tier = next((tier_map[i] for i in billing_ids(obj) if i in tier_map), None)
    return {
        "status": STATUS_MAP.get(str(obj.get("status"))),
        "tier": tier,
        # Since API 2025-03-31 the period lives on the item; older shapes on the object.
        "current_period_end": _epoch(end if end is not None
                                     else obj.get("current_period_end")),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "stripe_subscription_id": obj.get("id"),
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
    stripe_status: str | None

    @property
    def deletion(self) -> bool:
        return self.reason != "drift"


@dataclass
class _Tally:
    checked: int = 0
    fetched: int = 0
    changed: int = 0
    by_field: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    deleted: int = 0
    skipped_concurrent: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    unmapped: set[str] = field(default_factory=set)
    unknown_statuses: set[str] = field(default_factory=set)


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
        return (
            sa.select(subs.c.id, subs.c.user_id, subs.c.stripe_customer_id, subs.c.updated_at,
                      *[subs.c[name] for name in FIELDS])
            .where(subs.c.stripe_subscription_id.is_not(None),
                   sa.or_(subs.c.status == "active", subs.c.updated_at >= cutoff))
            .order_by(subs.c.id)
        )

    def strategy(self) -> str:
        chosen = self.ctx.settings.stripe_sync_strategy
        if chosen != "auto":
            return chosen
        with self.ctx.engine.connect() as conn:
            live = conn.scalar(sa.select(sa.func.count()).select_from(
                self._candidates().where(subs.c.status == "active").subquery()))
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
                if row.status != "active":
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
        if obj.get("status") in ENDED:
            self._deleted(row, "canceled_in_stripe")
            return
        remote = stripe_state(obj, self.ctx.settings.stripe_tier_map)
        if remote["tier"] is None:
            ids = billing_ids(obj)
            self.tally.unmapped.add(ids[0] if ids else "(no price or plan)")
            remote["tier"] = row.tier  # unmapped: keep ours rather than guess
        if remote["status"] is None:
            self.tally.unknown_statuses.add(str(obj.get("status")))
            remote["status"] = row.status  # never write what the CHECK would reject
        changed = [name for name in FIELDS if not _same(name, row._mapping[name], remote[name])]
        if changed:
            self._queue(_Change(row, remote, changed, "drift", str(obj.get("status"))))

    def _missing(self, row: Row[Any]) -> None:
        self._deleted(row, "missing_in_stripe")

    def _deleted(self, row: Row[Any], reason: str) -> None:
        after = {name: row._mapping[name] for name in FIELDS}
        after.update(tier="free", status="inactive", cancel_at_period_end=False,
                     stripe_subscription_id=None)
        changed = [name for name in FIELDS if not _same(name, row._mapping[name], after[name])]
        self._queue(_Change(row, after, changed, reason, None))

    def _queue(self, change: _Change) -> None:
        if self.ctx.dry_run:
            self.tally.changed += 1
            self.tally.by_field.update(change.changed)
            self.tally.deleted += change.deletion
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
            self.tally.deleted += change.deletion

    def _history(self, change: _Change) -> dict[str, Any]:
        row = change.row
        return {
            "id": new_uuid(),
            "user_id": row.user_id,
            "event_type": "subscription_deleted" if change.deletion else "subscription_created",
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
                "stripe_status": change.stripe_status,
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
        + f", {t.deleted} ended in Stripe ({t.missing} missing there), "
        f"{len(t.failures)} failed; "
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
        "deleted": t.deleted,
        "unknown_stripe_statuses": sorted(t.unknown_statuses),
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
