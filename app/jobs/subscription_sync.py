"""subscription-sync: the safety net behind Stripe's webhooks, on `user_subscriptions`.

Only rows with a `stripe_subscription_id` are Stripe's business: the sign-up trigger's
premium year and promo-code tiers have none and are never read or written here.

1. Select those rows: every `active` one, and the others updated within
   `SUBSCRIPTION_SYNC_LOOKBACK_DAYS`.
2. Fetch their state from Stripe (`app.adapters.stripe_gateway`: rate-limited, SDK retries, 429
   backoff), by the cheaper of two strategies:
   - *list*: page through `subscriptions.list` (100 per call; it returns every
     non-canceled subscription), stopping as soon as every active row was seen; only what
     the list cannot show (canceled in Stripe, missing, our inactive rows) is then
     retrieved one by one.
   - *retrieve*: one call per row, from a bounded thread pool under the rate limit.
   `auto` lists once the active rows fill more than one page.
3. Compare what the app stores: the tier, the highest one among ALL subscription items
   (each item's price, then plan, then product id through `STRIPE_TIER_MAP`; an item no
   entry covers, or an item list Stripe gave only in part, keeps ours and is reported:
   never lower a tier on incomplete evidence), the status mapped into the values the
   table's CHECK admits (`STATUS_MAP`: `trialing`/`past_due` are `active`, `unpaid`/
   `incomplete`/`paused` are `inactive`; an unknown status keeps ours and is reported),
   `current_period_end` (the latest item's, then the subscription's: both API shapes
   exist) and `cancel_at_period_end`.
4. A subscription Stripe canceled, or whose id its account does not know (404), gets what
   the app's `customer.subscription.deleted` handler writes: tier `free`, status
   `inactive`, no Stripe subscription id, and a `subscription_deleted` history row dated
   when it ended.  A 404 that says "a similar object exists in live/test mode" is a key
   of the wrong mode, not a missing subscription: a failure, changing nothing.
5. Stop, changing nothing, when the evidence is the key's rather than the customers':
   - every call failed: Stripe is down (`TransientError`: the run is retried, then
     alerted) or, when every failure is a mode mismatch, the key is wrong (refused);
   - Stripe answered 404 for every subscription and knew none: the key is another
     account's (refused; `force` goes on);
   - the brake (`SUBSCRIPTION_SYNC_DOWNGRADE_BRAKE_SHARE`/`_COUNT`): more cancellations
     and downgrades than the count and than the share of the subscriptions checked.
6. Write the changes as chunks (app/core/chunks.py) of `BATCH_SIZE` subscriptions, each
   chunk carrying its rows as they were read and their new values.  The reads are chunks
   too, a stage before: the *retrieve* strategy reads the candidates in id ranges of
   `_CHUNK` (a run that reaches its time budget pauses between them, or inside one, which
   is read again); the *list* strategy is one chunk, which must fit an invocation (else
   it changes nothing: `_check_time`).  Step 5 runs once every read chunk is done
   (`advance`), so the brake sees the whole set before one row is written.  Each row is
   written only if no
   webhook touched it since it was read, with one history row named as the app names it
   (`subscription_created`, what
   its webhook records for every update; `subscription_deleted`), before/after values and
   the run id in `details`: `voyagesmart-cron restore <run-id>` puts them back
   (`restore` below).  Any other failure is counted and named, and the others carry on:
   the run ends as `warning`, as it does when a tier or status was kept unread.
7. Report checked, changed by field, ended, downgrades, the brake's figures, samples,
   failures, API calls.

A dry run fetches, compares and engages the same brake, and writes nothing: it predicts
the real run's counts and samples.  Skipped (nothing to do, `nothing_to_do`) when no row
has a Stripe subscription.

Longer than the usual 400 lines: one module per job, read top to bottom in the order of the
steps above; Stripe itself is in app/adapters/stripe_gateway.py.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine, Row

from app.adapters.stripe_gateway import (
    PAGE_SIZE,
    StripeGateway,
    StripeUnavailable,
    is_key_mismatch,
    is_missing,
)
from app.adapters.stripe_key import key_mode
from app.config import Settings
from app.core import chunks
from app.core.batching import KeyRange, in_range, key_ranges, keys_in, stream_rows
from app.core.chunks import Chunked, Plan
from app.core.context import JobContext, JobResult
from app.core.errors import JobAborted, JobRefused, TransientError
from app.core.safety import SAMPLES, Brake
from app.core.status import RunStatus
from app.db import UTCDateTime, new_uuid, table_of
from app.models import SubscriptionHistory, UserSubscription
from app.models.voyagesmart import SUBSCRIPTION_STATUSES, TIERS
from app.voyagesmart.subscription_restore import restore_run

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
_RANK = {tier: rank for rank, tier in enumerate(TIERS)}  # free < premium < ai
SOURCE = "subscription-sync"  # details.source of the history rows this job writes
_MIN_FAILURES_FOR_OUTAGE = 10
# Seconds of the invocation the reads leave for planning the writes and closing the run.
_READ_MARGIN_S = 10.0


# --- Stripe object -> local columns (pure) ----------------------------------------------
def _epoch(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(value), dt.UTC) if value is not None else None


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


def _items(obj: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The subscription's items, and whether that list is all of them.  The oldest shape
    has no item list, only the subscription's own plan: that plan is its one item."""
    items = obj.get("items")
    if items is None:
        plan = obj.get("plan")
        return ([{"plan": plan}], True) if isinstance(plan, dict) else ([], False)
    data = items.get("data") if isinstance(items, dict) else None
    if not isinstance(data, list):
        return [], False
    complete = isinstance(items, dict) and not items.get("has_more")
    return [item for item in data if isinstance(item, dict)], complete


def _item_ids(item: dict[str, Any]) -> list[str]:
    """Price, plan and product ids of one item, most specific first."""
    price = item.get("price")
    plan = item.get("plan")
    price = price if isinstance(price, dict) else {}
    plan = plan if isinstance(plan, dict) else {}
    ids = [_id(item.get("price")), _id(item.get("plan")), _id(price.get("product")),
           _id(plan.get("product"))]
    return [i for i in ids if i]


def billing_ids(obj: dict[str, Any]) -> list[str]:
    """Price, plan and product ids of every item of a subscription, most specific first."""
    return [i for item in _items(obj)[0] for i in _item_ids(item)]


@dataclass(frozen=True)
class TierReading:
    """The tier Stripe's items stand for; None when they do not say it completely."""

    tier: str | None
    unmapped: tuple[str, ...] = ()  # items no STRIPE_TIER_MAP entry covers (their first id)
    incomplete: bool = False  # no item list, or only its first page


def read_tier(obj: dict[str, Any], tier_map: dict[str, str]) -> TierReading:
    """The highest tier among ALL items (a premium plan plus an AI add-on is `ai`, whatever
    their order).  One item the map does not cover, or an item list Stripe did not give
    whole, leaves the tier unknown: never lower a tier on incomplete evidence."""
    items, complete = _items(obj)
    tiers: list[str] = []
    unmapped: list[str] = []
    for item in items:
        ids = _item_ids(item)
        tier = next((tier_map[i] for i in ids if i in tier_map), None)
        if tier is None:
            unmapped.append(ids[0] if ids else "(item without price or plan)")
        else:
            tiers.append(tier)
    if unmapped or not complete or not tiers:
        return TierReading(None, tuple(unmapped), not complete)
    return TierReading(max(tiers, key=_RANK.__getitem__))


def _period_end(obj: dict[str, Any]) -> dt.datetime | None:
    """Since API 2025-03-31 each item has its own period; the latest one ends the
    subscription's.  Older shapes have it on the subscription."""
    ends = [item.get("current_period_end") for item in _items(obj)[0]]
    known = [int(end) for end in ends if end is not None]
    return _epoch(max(known)) if known else _epoch(obj.get("current_period_end"))


def stripe_state(obj: dict[str, Any], tier_map: dict[str, str]) -> dict[str, Any]:
    """Local column values for a Stripe subscription; `tier` is None when the items do not
    say it completely and `status` None when Stripe's status has no local equivalent."""
    return {
        "status": STATUS_MAP.get(str(obj.get("status"))),
        "tier": read_tier(obj, tier_map).tier,
        "current_period_end": _period_end(obj),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "stripe_subscription_id": obj.get("id"),
    }


def ended_at(obj: dict[str, Any] | None, row: Any, now: dt.datetime) -> dt.datetime:
    """When a subscription actually ended: Stripe's `ended_at`; else, canceled at period
    end, the later of `canceled_at` and the period end; else `canceled_at`.  Without
    Stripe's word (404), the period end of a row canceled at its end, else now.  Never
    after now."""
    at: dt.datetime | None = None
    if obj is not None:
        at = _epoch(obj.get("ended_at"))
        canceled = _epoch(obj.get("canceled_at"))
        period_end = _period_end(obj)
        if at is None and obj.get("cancel_at_period_end") and period_end is not None:
            at = max(canceled, period_end) if canceled is not None else period_end
        at = at or canceled
    elif row.cancel_at_period_end and row.current_period_end is not None:
        at = row.current_period_end
    return min(at, now) if at is not None else now


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
_SEEN = ("id", "user_id", "stripe_customer_id", "updated_at", *FIELDS)
_UUIDS = frozenset({"id", "user_id"})


def _parse(name: str, value: Any) -> Any:
    """A value of `_SEEN` back from its JSON form (`_json`)."""
    if value is None:
        return None
    if name in _UUIDS:
        return uuid.UUID(value)
    if name in _TIMES or name == "updated_at":
        return dt.datetime.fromisoformat(value)
    return value


@dataclass(frozen=True)
class _Seen:
    """A row as it was read: what its write is conditional on, and what history names."""

    id: uuid.UUID
    user_id: uuid.UUID
    stripe_customer_id: str | None
    updated_at: dt.datetime | None
    status: str
    tier: str
    current_period_end: dt.datetime | None
    cancel_at_period_end: bool | None
    stripe_subscription_id: str | None

    @classmethod
    def of(cls, row: Row[Any]) -> _Seen:
        return cls(**{name: row._mapping[name] for name in _SEEN})

    def as_args(self) -> dict[str, Any]:
        return {name: _json(getattr(self, name)) if name not in _UUIDS
                else str(getattr(self, name)) for name in _SEEN}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> _Seen:
        return cls(**{name: _parse(name, args[name]) for name in _SEEN})


@dataclass
class _Change:
    row: _Seen
    after: dict[str, Any]  # every FIELD, new values
    changed: list[str]
    reason: str  # drift | canceled_in_stripe | missing_in_stripe
    stripe_status: str | None
    at: dt.datetime  # when it happened (the history row's event_timestamp)

    @property
    def deletion(self) -> bool:
        return self.reason != "drift"

    @property
    def lowers(self) -> bool:
        """A cancellation or downgrade: a lower tier, or an active row made inactive."""
        row = self.row
        return (_RANK.get(self.after["tier"], 0) < _RANK.get(row.tier, 0)
                or (row.status == "active" and self.after["status"] != "active"))

    def sample(self) -> str:
        return (f"{self.row.stripe_subscription_id}: {self.row.tier}/{self.row.status} -> "
                f"{self.after['tier']}/{self.after['status']} ({self.reason})")

    def as_args(self) -> dict[str, Any]:
        """Everything its write needs, as JSON: a chunk's arguments."""
        return {"row": self.row.as_args(),
                "after": {name: _json(value) for name, value in self.after.items()},
                "changed": self.changed, "reason": self.reason,
                "stripe_status": self.stripe_status, "at": self.at.isoformat()}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> _Change:
        return cls(_Seen.from_args(args["row"]),
                   {name: _parse(name, value) for name, value in args["after"].items()},
                   list(args["changed"]), args["reason"], args["stripe_status"],
                   dt.datetime.fromisoformat(args["at"]))


@dataclass
class _Tally:
    checked: int = 0
    fetched: int = 0
    changed: int = 0
    by_field: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    deleted: int = 0
    downgrades: int = 0
    skipped_concurrent: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    unmapped: set[str] = field(default_factory=set)
    incomplete_items: list[str] = field(default_factory=list)
    unknown_statuses: set[str] = field(default_factory=set)
    brake: dict[str, Any] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)


class _Sync:
    def __init__(self, ctx: JobContext, gateway: StripeGateway | None, *,
                 cutoff: dt.datetime | None = None, pausable: bool = False) -> None:
        self.ctx = ctx
        self.gateway = gateway
        self.cutoff = cutoff or ctx.now - dt.timedelta(
            days=ctx.settings.subscription_sync_lookback_days)
        # A read chunk of the retrieve strategy pauses the run when out of time (it is
        # read again next call); the list strategy's one chunk must fit an invocation.
        self.pausable = pausable
        self.tally = _Tally()
        # Every change waits here until the brake has seen them all: past it, nothing is
        # written.  One entry per drifted row (a normal night changes a handful).
        self.pending: list[_Change] = []
        self.started = time.monotonic()
        s = ctx.settings
        self.brake = Brake(
            "cancel or downgrade subscriptions", s.subscription_sync_downgrade_brake_share,
            s.subscription_sync_downgrade_brake_count,
            ("SUBSCRIPTION_SYNC_DOWNGRADE_BRAKE_SHARE", "SUBSCRIPTION_SYNC_DOWNGRADE_BRAKE_COUNT"))

    # candidates
    def _candidates(self) -> sa.Select[Any]:
        return (
            sa.select(subs.c.id, subs.c.user_id, subs.c.stripe_customer_id, subs.c.updated_at,
                      *[subs.c[name] for name in FIELDS])
            .where(candidate(self.cutoff))
            .order_by(subs.c.id)
        )

    def _stripe(self) -> StripeGateway:
        if self.gateway is None:
            raise RuntimeError("reading Stripe needs a gateway")
        return self.gateway

    def read(self, strategy: str, keys: KeyRange = (None, None)) -> None:
        """Steps 1-4 for the candidates with an id in `keys` (the list strategy: all)."""
        if strategy == "list":
            self._run_list()
        else:
            query = self._candidates().where(in_range(subs.c.id, *keys))
            for part in stream_rows(self.ctx.engine, query, _CHUNK):
                self._retrieve(part)

    def found(self) -> dict[str, Any]:
        """What a read chunk found: its counts and named oddities, and its changes keyed
        by row id (a chunk's counters: app/core/chunks.py sums them)."""
        t = self.tally
        gateway = self.gateway
        return {
            "read": {"checked": t.checked, "fetched": t.fetched, "missing": t.missing,
                     "failed": len(t.failures),
                     "key_mismatches": sum(f["kind"] == "key_mismatch" for f in t.failures),
                     "api_calls": gateway.requests if gateway else 0,
                     "rate_limited": gateway.rate_limited if gateway else 0},
            "failures": t.failures[:_NAMED_FAILURES], "unmapped": sorted(t.unmapped),
            "incomplete_items": t.incomplete_items,
            "unknown_statuses": sorted(t.unknown_statuses),
            "changes": {str(c.row.id): c.as_args() for c in self.pending},
        }

    @classmethod
    def of_reads(cls, ctx: JobContext, totals: dict[str, Any]) -> tuple[_Sync, dict[str, int]]:
        """The run's reads, summed over its read chunks: for the stops and the brake."""
        sync = cls(ctx, None)
        read = {k: int(v) for k, v in totals.get("read", {}).items()}
        t = sync.tally
        t.checked, t.fetched = read.get("checked", 0), read.get("fetched", 0)
        t.missing = read.get("missing", 0)
        t.failures = list(totals.get("failures", []))
        t.unmapped = set(totals.get("unmapped", []))
        t.incomplete_items = list(totals.get("incomplete_items", []))
        t.unknown_statuses = set(totals.get("unknown_statuses", []))
        sync.pending = [_Change.from_args(args)
                        for args in dict(totals.get("changes", {})).values()]
        return sync, read

    def judge(self, failed: int, mismatches: int) -> None:
        """Step 5 over the whole run's reads: the stops, then the brake."""
        self._stop_if_nothing_answered(minimum=1, failed=failed, mismatches=mismatches)
        self._stop_if_the_key_knows_none(failed)
        self._judge()

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
            page, more = self._stripe().list_subscriptions(cursor)
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
        gateway = self._stripe()

        def fetch(row: Row[Any]) -> tuple[Row[Any], dict[str, Any] | None, Exception | None]:
            try:
                return row, gateway.retrieve_subscription(row.stripe_subscription_id), None
            except (stripe.AuthenticationError, stripe.PermissionError):
                raise  # the key is wrong: every call would fail the same way
            except StripeUnavailable as exc:
                return row, None, exc.original  # one row's failure, named as Stripe said
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
                    self._deleted(row, None, "missing_in_stripe")
                elif exc is not None:
                    self._failed(row, exc)
        t = self.tally
        self._stop_if_nothing_answered(
            minimum=_MIN_FAILURES_FOR_OUTAGE, failed=len(t.failures),
            mismatches=sum(f["kind"] == "key_mismatch" for f in t.failures))

    def _failed(self, row: Row[Any], exc: Exception) -> None:
        message = str(getattr(exc, "user_message", None) or exc).strip().splitlines()
        summary = f"{type(exc).__name__}: {message[0] if message else ''}".strip(": ")
        self.tally.failures.append({"stripe_subscription_id": row.stripe_subscription_id,
                                    "kind": "key_mismatch" if is_key_mismatch(exc) else "error",
                                    "error": summary[:200]})
        self.ctx.log.warning("subscription %s not synced: %s", row.stripe_subscription_id,
                             summary)

    def _stop_if_nothing_answered(self, *, minimum: int, failed: int, mismatches: int
                                  ) -> None:
        """Every call failed: Stripe is down (retry the run later) or the key is of the
        other mode (retrying cannot help).  Either way nothing is written."""
        t = self.tally
        if failed < minimum or t.fetched or t.missing:
            return
        named = {"failed": failed, "failures": t.failures[:_NAMED_FAILURES]}
        if mismatches == failed:
            raise JobRefused(
                f"Stripe knows all {failed} subscription(s) checked only in the other "
                f"mode ({t.failures[0]['error']}): STRIPE_SECRET_KEY is a {_mode(self.ctx)} "
                "key for the wrong mode; nothing was changed", named)
        raise TransientError(f"Stripe failed {failed} calls and answered none: "
                             + t.failures[0]["error"])

    def _stop_if_the_key_knows_none(self, failed: int) -> None:
        """Stripe answered 404 for every subscription it was asked for: the key belongs to
        another account (or mode), not every customer canceled at once."""
        t = self.tally
        if t.fetched or not t.missing or self.ctx.force:
            return
        samples = sorted(c.row.stripe_subscription_id or "" for c in self.pending
                         if c.reason == "missing_in_stripe")[:SAMPLES]
        raise JobRefused(
            f"Stripe knows none of the {t.missing} subscription(s) checked (404 for each, "
            f"{failed} other failure(s)): STRIPE_SECRET_KEY ({_mode(self.ctx)} mode) "
            "is probably another account's or the wrong mode; nothing was changed. Fix the "
            "key, or run again with force (--force, ?force=true) if they really are gone",
            {"missing_in_stripe": t.missing, "failed": failed, "samples": samples})

    def _check_time(self) -> None:
        if self.ctx.deadline is None:
            return
        elapsed = dt.timedelta(seconds=time.monotonic() - self.started)
        left = self.ctx.seconds_left(self.ctx.now + elapsed)
        # The brake must see every subscription before one is written: a read chunk
        # that does not fit pauses the run (it is read again next call); the list read,
        # or a run past its max runtime, changes nothing at all.
        if self.pausable and chunks.out_of_time(self.ctx, _READ_MARGIN_S):
            raise chunks.OutOfTime
        if (left is not None and left < 30) or chunks.out_of_time(self.ctx, _READ_MARGIN_S):
            raise JobAborted(f"time budget nearly spent after checking {self.tally.checked} "
                             "subscriptions, before all were read: nothing was changed; "
                             "the next run reads them again")

    # comparison
    def _compare(self, row: Row[Any], obj: dict[str, Any]) -> None:
        if obj.get("status") in ENDED:
            self._deleted(row, obj, "canceled_in_stripe")
            return
        remote = stripe_state(obj, self.ctx.settings.stripe_tier_map)
        if remote["tier"] is None:
            reading = read_tier(obj, self.ctx.settings.stripe_tier_map)
            self.tally.unmapped.update(reading.unmapped)
            if reading.incomplete:
                self.tally.incomplete_items.append(row.stripe_subscription_id)
            remote["tier"] = row.tier  # not said completely: keep ours rather than guess
        if remote["status"] is None:
            self.tally.unknown_statuses.add(str(obj.get("status")))
            remote["status"] = row.status  # never write what the CHECK would reject
        changed = [name for name in FIELDS if not _same(name, row._mapping[name], remote[name])]
        if changed:
            self.pending.append(_Change(_Seen.of(row), remote, changed, "drift",
                                        str(obj.get("status")), self.ctx.now))

    def _deleted(self, row: Row[Any], obj: dict[str, Any] | None, reason: str) -> None:
        after = {name: row._mapping[name] for name in FIELDS}
        after.update(tier="free", status="inactive", cancel_at_period_end=False,
                     stripe_subscription_id=None)
        changed = [name for name in FIELDS if not _same(name, row._mapping[name], after[name])]
        status = str(obj.get("status")) if obj is not None else None
        self.pending.append(_Change(_Seen.of(row), after, changed, reason, status,
                                    ended_at(obj, row, self.ctx.now)))

    def _judge(self) -> None:
        """The brake over every change found (a dry run asks it the same way)."""
        lowering = [c for c in self.pending if c.lowers]
        t = self.tally
        # Samples sorted by subscription id: the same whichever way Stripe was read.
        t.brake = self.brake.engage(affected=len(lowering), population=t.checked,
                                    samples=sorted(c.sample() for c in lowering),
                                    force=self.ctx.force)
        t.downgrades = len(lowering)
        t.samples = sorted(c.sample() for c in self.pending)[:SAMPLES]


class _Writes:
    """Step 6 for one chunk: its changes, written (a dry run counts them)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.tally = _Tally()

    def apply(self, batch: Sequence[_Change]) -> None:
        if self.ctx.dry_run:
            self._count(batch)
        else:
            self._flush(batch)

    def _count(self, done: Sequence[_Change]) -> None:
        for change in done:
            self.tally.changed += 1
            self.tally.by_field.update(change.changed)
            self.tally.deleted += change.deletion

    def _flush(self, batch: Sequence[_Change]) -> None:
        now = self.ctx.now
        # Each row only as it was read: the app's webhook does not move updated_at, so
        # the values themselves say whether it wrote since.
        update = (
            subs.update()
            .where(subs.c.id == sa.bindparam("k_id", type_=subs.c.id.type),
                   subs.c.updated_at.is_not_distinct_from(
                       sa.bindparam("k_seen", type_=UTCDateTime())),
                   *[subs.c[name].is_not_distinct_from(
                       sa.bindparam(f"k_{name}", type_=subs.c[name].type)) for name in FIELDS])
            .values({**{name: sa.bindparam(f"v_{name}", type_=subs.c[name].type)
                        for name in FIELDS}, "updated_at": now})
        )
        params = [{"k_id": c.row.id, "k_seen": c.row.updated_at,
                   **{f"k_{name}": getattr(c.row, name) for name in FIELDS},
                   **{f"v_{name}": c.after[name] for name in FIELDS}} for c in batch]
        with self.ctx.engine.begin() as conn:
            conn.execute(update, params)
            # Rows rewritten after we read them were left alone: theirs is newer.
            written = set(conn.scalars(sa.select(subs.c.id).where(
                keys_in(subs.c.id, [c.row.id for c in batch], conn.dialect),
                subs.c.updated_at == now)))
            done = [c for c in batch if c.row.id in written]
            if done:
                conn.execute(history.insert(), [self._history(c) for c in done])
        self.tally.skipped_concurrent += len(batch) - len(done)
        self._count(done)

    def _history(self, change: _Change) -> dict[str, Any]:
        row = change.row
        details: dict[str, Any] = {
            "source": SOURCE,
            "run_id": str(self.ctx.run_id),
            "row_id": str(row.id),
            "reason": change.reason,
            "stripe_status": change.stripe_status,
            "changed": change.changed,
            "before": {name: _json(getattr(row, name)) for name in change.changed},
            "after": {name: _json(change.after[name]) for name in change.changed},
        }
        if change.deletion:
            details["ended_at"] = change.at.isoformat()
        return {
            "id": new_uuid(),
            "user_id": row.user_id,
            "event_type": "subscription_deleted" if change.deletion else "subscription_created",
            "tier": change.after["tier"],
            "status": change.after["status"],
            "stripe_subscription_id": row.stripe_subscription_id,
            "stripe_customer_id": row.stripe_customer_id,
            # When it happened (a cancellation: when the subscription ended), so the
            # reports count it in its month; created_at says when it was recorded.
            "event_timestamp": change.at,
            "created_at": self.ctx.now,
            "details": details,
        }


def _mode(ctx: JobContext) -> str:
    secret = ctx.settings.stripe_secret_key
    return key_mode(secret.get_secret_value() if secret is not None else None) or "unknown"


def _describe(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts)


def nothing_to_do(ctx: JobContext) -> str | None:
    """The precondition (app/core/registry.py): no subscription is Stripe's business."""
    with ctx.engine.connect() as conn:
        if conn.execute(sa.select(sa.exists().where(
                subs.c.stripe_subscription_id.is_not(None)))).scalar():
            return None
    return "no subscription to sync: no user_subscriptions row has a stripe_subscription_id"


def candidate(cutoff: dt.datetime) -> sa.ColumnElement[bool]:
    """Step 1: a Stripe subscription, active or updated since `cutoff`."""
    return sa.and_(subs.c.stripe_subscription_id.is_not(None),
                   sa.or_(subs.c.status == "active", subs.c.updated_at >= cutoff))


def _strategy(ctx: JobContext, cutoff: dt.datetime) -> str:
    chosen = ctx.settings.stripe_sync_strategy
    if chosen != "auto":
        return chosen
    with ctx.engine.connect() as conn:
        live = conn.scalar(sa.select(sa.func.count()).select_from(subs).where(
            candidate(cutoff), subs.c.status == "active"))
    return "list" if int(live or 0) > PAGE_SIZE else "retrieve"


def plan(ctx: JobContext) -> Plan:
    """The reads of steps 1-4, as chunks: the candidates in id ranges of `_CHUNK` (the
    retrieve strategy), or the one list read.  Nothing is written before every chunk is
    read and `advance` has judged them all (step 5)."""
    cutoff = ctx.now - dt.timedelta(days=ctx.settings.subscription_sync_lookback_days)
    strategy = _strategy(ctx, cutoff)
    notes = {"stage": "read", "strategy": strategy, "cutoff": cutoff.isoformat()}
    if strategy == "list":
        return Plan([{"step": "list", "cutoff": cutoff.isoformat()}], notes)
    ranges = key_ranges(ctx.engine, subs.c.id, _CHUNK, where=candidate(cutoff))
    return Plan([{"step": "read", "cutoff": cutoff.isoformat(), "after": after,
                  "upto": upto} for after, upto in ranges], notes)


def _read(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
    """Steps 1-4 for one read chunk: what Stripe says of its subscriptions, and the changes
    it asks for (written only past step 5)."""
    cutoff = dt.datetime.fromisoformat(args["cutoff"])
    listing = args["step"] == "list"
    with StripeGateway(ctx.settings) as gateway:
        sync = _Sync(ctx, gateway, cutoff=cutoff, pausable=not listing)
        sync.read("list" if listing else "retrieve",
                  (args.get("after"), args.get("upto")))
        return sync.found()


def advance(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]
            ) -> Plan | None:
    """Step 5 once every read chunk is done: the stops and the brake over the whole run's
    reads; past them, the write chunks: `BATCH_SIZE` changes each, every one with the row
    as it was read and its new values."""
    if notes["stage"] != "read":
        return None
    sync, read = _Sync.of_reads(ctx, totals)
    sync.judge(read.get("failed", 0), read.get("key_mismatches", 0))
    t = sync.tally
    notes = {
        "stage": "write", "strategy": notes["strategy"], "checked": t.checked,
        "missing_in_stripe": t.missing, "downgrades": t.downgrades, "brake": t.brake,
        "samples": t.samples, "failed": read.get("failed", 0),
        "key_mismatches": read.get("key_mismatches", 0),
        "failures": t.failures[:_NAMED_FAILURES], "unmapped": sorted(t.unmapped),
        "incomplete_items": t.incomplete_items,
        "unknown_statuses": sorted(t.unknown_statuses),
        "api_calls": read.get("api_calls", 0), "rate_limited": read.get("rate_limited", 0),
    }
    changes = [c.as_args() for c in sync.pending]
    return Plan([{"step": "write", "changes": part}
                 for part in chunks.split(changes, ctx.settings.batch_size)], notes)


def work(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
    """A read chunk (steps 1-4), or step 6 for one write chunk: its subscriptions'
    changes, each row only as it was read."""
    if args.get("step") in ("read", "list"):
        return _read(ctx, args)
    writes = _Writes(ctx)
    writes.apply([_Change.from_args(change) for change in args["changes"]])
    t = writes.tally
    return {"records": t.changed, "changed": t.changed, "by_field": dict(t.by_field),
            "deleted": t.deleted, "skipped_concurrent": t.skipped_concurrent}


def finish(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]) -> JobResult:
    """Step 7: the plan's findings and the chunks' writes, summed."""
    changed, deleted = int(totals.get("changed", 0)), int(totals.get("deleted", 0))
    by_field: dict[str, int] = {name: int(n) for name, n in totals.get("by_field", {}).items()}
    failures: list[dict[str, str]] = notes["failures"]
    unknown: list[str] = notes["unknown_statuses"]
    unmapped: list[str] = notes["unmapped"]
    incomplete: list[str] = notes["incomplete_items"]
    checked, failed, strategy = notes["checked"], notes["failed"], notes["strategy"]
    verb = "would change" if ctx.dry_run else "changed"
    message = (
        f"checked {checked}: {verb} {changed}"
        + (f" ({_describe(sorted(by_field.items()))})" if by_field else "")
        + f", {deleted} ended in Stripe ({notes['missing_in_stripe']} missing there), "
        f"{notes['downgrades']} canceled or downgraded, {failed} failed; "
        f"{notes['api_calls']} API calls ({strategy})"
    )
    if failures:
        names = ", ".join(f["stripe_subscription_id"] for f in failures[:5])
        more = f" and {failed - 5} more" if failed > 5 else ""
        message += f"; failed: {names}{more}"
    if unmapped:
        message += (f"; tier kept for prices STRIPE_TIER_MAP does not cover: "
                    f"{', '.join(unmapped[:5])}" + (" and more" if len(unmapped) > 5 else ""))
    if incomplete:
        message += (f"; tier kept where Stripe gave only part of the items: "
                    f"{', '.join(incomplete[:5])}")
    if unknown:
        message += "; status kept for unknown Stripe statuses: " + ", ".join(unknown)
    details = {
        "strategy": notes["strategy"],
        "dry_run": ctx.dry_run,
        "checked": checked,
        "changed": changed,
        "changed_by_field": dict(sorted(by_field.items())),
        "missing_in_stripe": notes['missing_in_stripe'],
        "deleted": deleted,
        "downgrades": notes["downgrades"],
        "brake": notes["brake"],
        "samples": notes["samples"],
        "unknown_stripe_statuses": unknown,
        "failed": notes["failed"],
        "key_mismatches": notes["key_mismatches"],
        "failures": failures,
        "skipped_concurrent": int(totals.get("skipped_concurrent", 0)),
        "unmapped_tier_ids": unmapped[:_NAMED_FAILURES],
        "incomplete_item_lists": incomplete[:_NAMED_FAILURES],
        "api_calls": notes["api_calls"],
        "rate_limited_retries": notes["rate_limited"],
        "lookback_days": ctx.settings.subscription_sync_lookback_days,
        "key_mode": _mode(ctx),
    }
    attention = failures or unmapped or incomplete or unknown
    return JobResult(records_processed=changed, message=message,
                     status=RunStatus.WARNING if attention else RunStatus.SUCCESS, details=details)


# Its read and write chunks are independent (a range of rows each; a write re-checks its
# row): the queue spreads them over its workers.
run = Chunked(plan=plan, work=work, finish=finish, advance=advance,
              parallel=frozenset({"read", "write"}))


def restore(settings: Settings, engine: Engine, run_id: uuid.UUID, now: dt.datetime,
            dry_run: bool) -> dict[str, Any]:
    """Set back what run `run_id` changed, from its history rows (app/subscription_restore)."""
    return restore_run(engine, run_id, now, dry_run, job="subscription-sync")
