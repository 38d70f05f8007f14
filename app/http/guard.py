"""What stands in front of the routes: client address, IP allowlist, rate limits.

1. The client address is the TCP peer (app/http/peer.py puts it back even where the server
   rewrote it from forwarding headers), unless the peer is in `TRUSTED_PROXIES`: then
   `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first
   address that is not one is the client.  Several header lines are one list (RFC 9110
   field-line combination), read in order.  A client talking to us directly cannot choose
   its address with `X-Forwarded-For`, `X-Real-IP` or `Forwarded`: none is read from it.
2. `/api/cron/*` from an address outside `CRON_IP_ALLOWLIST` (when set) is refused, 403.
3. Two budgets per address and fixed window, counted in the database so that they hold
   across every instance (Vercel runs many): calls presenting the valid secret count
   against `CRON_RATE_LIMIT`, failed authentications (cron, metrics, dashboard) against
   `AUTH_FAILURE_LIMIT` (one budget for every surface: cron, metrics, dashboard, `/health`
   with a bearer).  A flood of bad tokens exhausts only the failure budget, so valid
   credentials pass on every surface, even from the same shared egress address.  Which
   budget a call meets is the authentication's decision (app/http/auth.py), read here.
4. Over budget: 429 with `Retry-After`.  The instance then remembers the block until the
   window ends and answers without touching the database, so a flood costs one upsert per
   instance and window, not one per request.
5. Every cron call and every failed authentication writes one audit row (app/http/audit.py).
   Spent rate-limit windows are pruned with the audit rows, at most once an hour.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import table_of, upsert
from app.http.audit import RUN_STATUSES, AuditLog, cron_outcome, noted_run
from app.http.auth import Surface, authentication
from app.models import CronRateLimit

log = logging.getLogger("app.http.guard")

limit_t = table_of(CronRateLimit)

CRON_PREFIX = "/api/cron"
PRUNE_EVERY = dt.timedelta(hours=1)
MAX_LOCAL_BLOCKS = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in cidrs)


def _in(address: str | None, networks: tuple[Network, ...]) -> bool:
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: tuple[Network, ...]) -> str | None:
    """The client's address: the peer, or what trusted proxies say it forwarded for."""
    if not forwarded_for or not _in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    # Each proxy appends the address it received from; read right to left and stop at
    # the first hop we do not trust: anything left of it may be forged by the client.
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: fall back to the proxy we know
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


@dataclass(frozen=True)
class Verdict:
    """A refusal the guard answers itself, before the route."""

    status: int
    error: str
    outcome: str
    retry_after: int | None = None

    def response(self) -> JSONResponse:
        headers = {"Cache-Control": "no-store"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse({"error": self.error}, status_code=self.status, headers=headers)


class Defenses:
    """Per-application state of the defenses: parsed networks, local blocks, prune time."""

    def __init__(self, settings: Settings, engine: Engine,
                 clock: Callable[[], dt.datetime]) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.allowlist = _networks(settings.cron_ip_allowlist)
        self.trusted = _networks(settings.trusted_proxies)
        self._blocked: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()
        self._last_prune: dt.datetime | None = None
        self.audit_log = AuditLog(settings, engine, clock)

    # --- addresses ----------------------------------------------------------------------
    def address_of(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        # Every header line, in order: one comma-separated list (RFC 9110, section 5.3).
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")) or None
        return client_address(peer, forwarded, self.trusted)

    def allowed(self, address: str | None) -> bool:
        return not self.allowlist or _in(address, self.allowlist)

    # --- rate limits --------------------------------------------------------------------
    def _local_block(self, key: str, now: dt.datetime) -> int | None:
        with self._lock:
            until = self._blocked.get(key)
            if until is None:
                return None
            if until <= now:
                del self._blocked[key]
                return None
            return max(1, math.ceil((until - now).total_seconds()))

    def _remember_block(self, key: str, until: dt.datetime) -> None:
        with self._lock:
            if len(self._blocked) >= MAX_LOCAL_BLOCKS:
                now = self.clock()
                self._blocked = {k: v for k, v in self._blocked.items() if v > now}
                if len(self._blocked) >= MAX_LOCAL_BLOCKS:
                    self._blocked.clear()  # the database still holds every count
            self._blocked[key] = until

    def hit(self, key: str, limit: int, window_seconds: int) -> int | None:
        """Count one request against `key`; seconds to wait when over `limit`, else None.

        Fails open when the database cannot count: the routes then answer 503 themselves,
        and refusing the scheduler for a counter we cannot read would be worse.
        """
        now = self.clock()
        wait = self._local_block(key, now)
        if wait is not None:
            return wait
        epoch = int(now.timestamp())
        start = dt.datetime.fromtimestamp(epoch - epoch % window_seconds, dt.UTC)
        stmt = (
            upsert(self.engine.dialect, limit_t)
            .values(key=key[:160], window_start=start, hits=1)
            .on_conflict_do_update(index_elements=[limit_t.c.key, limit_t.c.window_start],
                                   set_={"hits": limit_t.c.hits + 1})
            .returning(limit_t.c.hits)
        )
        try:
            with self.engine.begin() as conn:
                hits = int(conn.execute(stmt).scalar_one())
        except sa_exc.SQLAlchemyError as exc:
            log.warning("rate limit not counted: %s", type(exc).__name__)
            return None
        if hits <= limit:
            return None
        until = start + dt.timedelta(seconds=window_seconds)
        self._remember_block(key, until)
        return max(1, math.ceil((until - now).total_seconds()))

    def failure_wait(self, address: str | None) -> int | None:
        """Seconds left on this address's failure block, without counting anything."""
        return self._local_block(f"auth-fail:{address}", self.clock())

    def auth_failure(self, address: str | None) -> int | None:
        return self.hit(f"auth-fail:{address}", self.settings.auth_failure_limit,
                        self.settings.auth_failure_window_seconds)

    def cron_call(self, address: str | None) -> int | None:
        return self.hit(f"cron:{address}", self.settings.cron_rate_limit,
                        self.settings.cron_rate_window_seconds)

    # --- audit --------------------------------------------------------------------------
    def audit(self, request: Request, *, outcome: str, status_code: int,
              task: str | None = None, run_id: Any = None) -> None:
        """One audit row (app/http/audit.py) from this request's client address."""
        try:
            self.audit_log.write(request, self.address_of(request), outcome=outcome,
                                 status_code=status_code, task=task, run_id=run_id)
            self._maybe_prune(self.clock())
        except sa_exc.SQLAlchemyError as exc:
            log.warning("audit row not written: %s", type(exc).__name__)

    def _maybe_prune(self, now: dt.datetime) -> None:
        with self._lock:
            if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY:
                return
            self._last_prune = now
        self.prune(now)

    def prune(self, now: dt.datetime) -> tuple[int, int]:
        """Delete audit rows past retention and rate-limit windows long over."""
        longest = max(self.settings.cron_rate_window_seconds,
                      self.settings.auth_failure_window_seconds)
        window_cutoff = now - dt.timedelta(seconds=2 * longest)
        audits = self.audit_log.prune(now)
        with self.engine.begin() as conn:
            windows = conn.execute(
                limit_t.delete().where(limit_t.c.window_start < window_cutoff)).rowcount
        return audits, windows


def defenses_of(request: Request) -> Defenses:
    defenses: Defenses = request.app.state.defenses
    return defenses


def _task_of(path: str) -> str | None:
    rest = path[len(CRON_PREFIX):].strip("/")
    return rest.split("/", 1)[0] if rest else None


def _failures_refused(wait: int) -> Verdict:
    return Verdict(429, "too many failed authentications; retry later", "rate_limited", wait)


async def guard_cron(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware for `/api/cron/*`: allowlist, rate limits, audit row."""
    path = request.url.path
    if path != CRON_PREFIX and not path.startswith(CRON_PREFIX + "/"):
        return await call_next(request)
    defenses = defenses_of(request)
    address = defenses.address_of(request)
    task = _task_of(path)
    verdict: Verdict | None = None
    # The same decision the route's dependency reads (computed once per request).
    auth = authentication(request, defenses.settings, Surface.CRON)
    if not defenses.allowed(address):
        verdict = Verdict(403, "this address may not call the cron endpoints", "ip_refused")
    elif auth.accepted:
        wait = await run_in_threadpool(defenses.cron_call, address)
        if wait is not None:
            verdict = Verdict(429, "too many cron calls from this address; retry later",
                              "rate_limited", wait)
    else:
        blocked = defenses.failure_wait(address)
        if blocked is not None:
            # Already blocked here: no database work at all for the flood.
            return _failures_refused(blocked).response()
        wait = await run_in_threadpool(defenses.auth_failure, address)
        if wait is not None:
            verdict = _failures_refused(wait)
    if verdict is not None:
        await run_in_threadpool(defenses.audit, request, outcome=verdict.outcome,
                                status_code=verdict.status, task=task)
        return verdict.response()
    response = await call_next(request)
    run = noted_run(request)
    if run is None and auth.accepted and response.status_code in RUN_STATUSES:
        log.error("%s %s answered %d without noting its run for the audit log "
                  "(app/http/audit.py note_run)", request.method, path, response.status_code)
    await run_in_threadpool(defenses.audit, request,
                            outcome=cron_outcome(auth, response.status_code, run),
                            status_code=response.status_code, task=task,
                            run_id=run.run_id if run is not None else None)
    return response


def refuse_failed_auth(request: Request) -> JSONResponse | None:
    """For `/metrics`, `/dashboard` and `/health` with a bearer, once the credential was found
    wrong: count the failure and audit it.

    Returns the 429 to send when the address is over its failure budget, else None (the
    caller then answers 401 itself).  An address already blocked on this instance is
    answered from memory.  Called only for a wrong credential: the valid credential of each
    surface passes even from a blocked address, as the scheduler's valid call does, so a
    flood of bad tokens from a shared address locks out no one who holds the real one.
    """
    defenses = defenses_of(request)
    address = defenses.address_of(request)
    blocked = defenses.failure_wait(address)
    if blocked is not None:
        return _failures_refused(blocked).response()
    wait = defenses.auth_failure(address)
    status = 429 if wait is not None else 401
    defenses.audit(request, outcome="rate_limited" if wait else "auth_failed",
                   status_code=status)
    if wait is None:
        return None
    return _failures_refused(wait).response()
