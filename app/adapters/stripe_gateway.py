"""Stripe through the official SDK, the way every job calls it.

- One `StripeClient` per run, with an explicit timeout, `max_network_retries` (the SDK then
  retries connection errors, timeouts, 409 and 5xx with its own backoff) and
  `STRIPE_API_BASE` when set.
- Every HTTP request, the SDK's own retries included, first passes a client-side rate
  limiter (`STRIPE_RATE_LIMIT`, shared by all threads of the run) and is counted, so a run
  reports exactly the calls it made.  In queue mode (`EXECUTION_MODE=queue`) the limit is
  the fleet's: pyrate-limiter's PostgreSQL bucket (its table `ratelimit___stripe`, made on
  first use) is shared by every process on DATABASE_URL, so all workers together stay
  under it.
- HTTP 429, which the SDK never retries, is retried here with exponential backoff and
  full jitter, honouring `Retry-After` when Stripe sends it.
- Every request, retries included, ends within the run's time budget (app/core/budget.py): its
  timeout is `STRIPE_TIMEOUT` or what is left, whichever is less, and once nothing is left
  no request starts (and the SDK does not retry that).
- A failure that may pass (429 once our own retries are spent, no connection, a 5xx)
  leaves the gateway as `StripeUnavailable`, the project's `TransientError`, chained to
  Stripe's exception: the runner retries the run without knowing Stripe.  Any other Stripe
  error (a bad key, a 404) leaves as Stripe raised it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import stripe
import tenacity
from pyrate_limiter import Duration, Limiter, PostgresBucket, Rate, validate_rate_list

from app.config import Settings
from app.core.budget import Budget
from app.core.errors import TransientError
from app.db import behind_transaction_pooler, libpq_conninfo
from app.observe import usage

T = TypeVar("T")

PAGE_SIZE = 100  # the most subscriptions.list returns per call
_MAX_RETRY_AFTER = 30.0


class StripeNotConfigured(RuntimeError):
    """No STRIPE_SECRET_KEY: retrying cannot help, the run fails at once."""


class StripeUnavailable(TransientError):
    """Stripe did not answer, or answered 429 or 5xx: the same call may succeed later."""

    def __init__(self, original: stripe.StripeError) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


@contextmanager
def _transient_as_project_error() -> Iterator[None]:
    try:
        yield
    except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
        raise StripeUnavailable(exc) from exc
    except stripe.StripeError as exc:
        if (exc.http_status or 0) >= 500:
            raise StripeUnavailable(exc) from exc
        raise


class _MeteredHTTPClient(stripe.RequestsClient):
    """The SDK's requests client, behind the rate limiter, with a request counter and the
    run's time budget."""

    def __init__(self, *, timeout: float, limiter: Limiter, budget: Budget) -> None:
        self._budget = budget
        super().__init__(timeout=timeout)
        self._limiter = limiter
        self._lock = threading.Lock()
        self.calls = 0  # `requests` is the SDK's handle on the requests module
        self._meter = usage.Meter.current()  # the run's, shared by its threads like the budget

    # The SDK reads `_timeout` for every request it sends: the configured one, capped by
    # what is left of the budget when the request starts.
    @property
    def _timeout(self) -> float:
        return self._budget.timeout(self._configured_timeout)

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._configured_timeout = value

    def request(self, method: str, url: str, headers: Mapping[str, str] | None,
                post_data: Any = None, *, _usage: list[str] | None = None) -> Any:
        if self._budget.spent:
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                "the run's time budget is spent; request not sent", should_retry=False)
        # Asked afresh each time rather than waiting inside the limiter: pyrate-limiter's
        # blocking wait dates the retried request by its estimate, not by the clock, and
        # with the fleet's shared bucket that let a few more through than the limit.
        while not self._limiter.try_acquire("stripe", blocking=False):
            time.sleep(_LIMIT_POLL_S)
        with self._lock:
            self.calls += 1
        usage.count(usage.Service.STRIPE, self._meter)
        return super().request(method, url, headers, post_data)


# The fleet's limiter counts a request when it takes its place in the shared bucket; it
# reaches Stripe a few milliseconds later, some later than others (a commit, a thread
# switch).  Its window is this much longer, so that the requests stay under the limit
# where Stripe counts them.
FLEET_SLACK = 1.05
# How often a request held back by the limiter asks again.
_LIMIT_POLL_S = 0.02


def _rate(requests_per_second: float, slack: float = 1.0) -> Rate:
    # pyrate-limiter counts whole requests per window: express 2.5/s as 5 per 2000 ms.
    limit = max(1, round(requests_per_second))
    return Rate(limit, round(Duration.SECOND * limit * slack / requests_per_second))


def _fleet_rates(requests_per_second: float) -> list[Rate]:
    """The fleet's limit, and a tenth of it per tenth of its window: requests spread
    evenly rather than in a burst at each window's start, so that the spread of their
    arrival times cannot pack one more into a second where Stripe counts them."""
    whole = _rate(requests_per_second, FLEET_SLACK)
    tenth = max(1, whole.limit // 10)
    fine = Rate(tenth, max(1, round(whole.interval * tenth / whole.limit)))
    return [fine, whole] if validate_rate_list([fine, whole]) else [whole]


# The fleet's limiters, one per database and rate in a process (each holds a small pool).
_FLEET: dict[tuple[str, float], Limiter] = {}
_FLEET_LOCK = threading.Lock()


def _limiter(settings: Settings) -> Limiter:
    """The process's own limiter inline; in queue mode the fleet's, on DATABASE_URL."""
    per_second = settings.stripe_requests_per_second
    if settings.execution_mode != "queue":
        return Limiter(_rate(per_second))
    key = (settings.database_url, per_second)
    with _FLEET_LOCK:
        if key not in _FLEET:
            from psycopg_pool import ConnectionPool

            kwargs: dict[str, Any] = {"application_name": "voyagesmart-cron stripe limit"}
            if behind_transaction_pooler(settings.database_url, settings.database_pooler):
                kwargs["prepare_threshold"] = None  # a transaction pooler keeps none
            pool = ConnectionPool(libpq_conninfo(settings.database_url), min_size=1,
                                  max_size=4, kwargs=kwargs, open=True)
            _FLEET[key] = Limiter(PostgresBucket(pool, "stripe", _fleet_rates(per_second)))
        return _FLEET[key]


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return min(float(value), _MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


class StripeGateway:
    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        if settings.stripe_secret_key is None:
            raise StripeNotConfigured("STRIPE_SECRET_KEY is not set")
        self._limiter = _limiter(settings)
        self._budget = Budget.current()  # captured here: the worker threads share it
        self._http = _MeteredHTTPClient(timeout=settings.stripe_timeout, limiter=self._limiter,
                                        budget=self._budget)
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self.client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=settings.stripe_max_network_retries,
            http_client=self._http,
        )
        self._sleep = sleep
        self._rate_limit_retries = settings.stripe_rate_limit_retries
        self._lock = threading.Lock()
        self.rate_limited = 0
        self._backoff = tenacity.wait_random_exponential(multiplier=0.5, max=8)

    @property
    def requests(self) -> int:
        return int(self._http.calls)

    def close(self) -> None:
        if self._limiter not in _FLEET.values():  # the fleet's serves the next gateway
            self._limiter.close()
        self._http.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> StripeGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------
    def call(self, func: Callable[[], T]) -> T:
        """`func()`, retrying HTTP 429 with backoff; a failure that may pass raises
        StripeUnavailable, any other error propagates."""

        def wait(state: tenacity.RetryCallState) -> float:
            hinted = _retry_after(state)
            return hinted if hinted is not None else self._backoff(state)

        def counted(_state: tenacity.RetryCallState) -> None:
            with self._lock:
                self.rate_limited += 1

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(stripe.RateLimitError),
            stop=tenacity.stop_after_attempt(self._rate_limit_retries + 1)
            | self._budget.stop(),
            wait=wait,
            before_sleep=counted,
            sleep=self._sleep,
            reraise=True,
        )
        with _transient_as_project_error():
            return retrying(func)

    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        sub = self.call(lambda: self.client.v1.subscriptions.retrieve(subscription_id))
        return sub.to_dict()

    def list_subscriptions(self, starting_after: str | None = None
                           ) -> tuple[list[dict[str, Any]], bool]:
        """One page of non-canceled subscriptions, newest first, and whether more follow."""
        params: Any = {"limit": PAGE_SIZE}
        if starting_after is not None:
            params["starting_after"] = starting_after
        page = self.call(lambda: self.client.v1.subscriptions.list(params=params))
        return [item.to_dict() for item in page.data], bool(page.has_more)


def _not_found(exc: Exception) -> bool:
    return (isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404
            and exc.code in (None, "resource_missing"))


def is_key_mismatch(exc: Exception) -> bool:
    """A 404 because the key is of the other mode: Stripe says "a similar object exists in
    live mode, but a test mode key was used" (or the reverse).  The object exists: the key
    is wrong, not the subscription."""
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return _not_found(exc) and "similar object exists in" in message


def is_missing(exc: Exception) -> bool:
    """The key's account does not know the object (404 `resource_missing`; some fakes omit
    the code), and not because the key is of the other mode."""
    return _not_found(exc) and not is_key_mismatch(exc)
