"""The TCP peer of each request, read from the connection itself, whatever the server did.

uvicorn, and so `voyagesmart-cron serve`, `uvicorn app.main:app`, `fastapi run` and
Vercel's Python runtime, rewrites `scope["client"]` from `X-Forwarded-For` by default
(`--proxy-headers` is on, trusting 127.0.0.1 and ::1 or `FORWARDED_ALLOW_IPS`).  A client on
the same host, or behind a local proxy that passes the header through, could then choose the
address the allowlist, the rate limits and the audit log see.  Only `TRUSTED_PROXIES`
(app/http/guard.py) may decide when a forwarding header is believed, so `PeerMiddleware`, the
app's outermost layer, puts the connection's real peer back into `scope["client"]`:

1. Under uvicorn the `receive` callable belongs to the request's protocol cycle, whose
   transport knows the peer (`get_extra_info("peername")`).  That address replaces whatever
   the server wrote.
2. Under a server whose connection is out of reach, a client address that one of the
   request's own forwarding headers names (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`) is
   taken to be rewritten: the request counts as coming from an unknown address (refused by
   `CRON_IP_ALLOWLIST`, one shared failure budget), never from the address it chose.  The
   service says so loudly at startup, and again the first time it happens.

"Outermost" means before FastAPI itself: `FastAPI.__call__` wraps the lifespan's `receive`
(its telemetry; the HTTP one too when OpenTelemetry is on), and behind that wrapper no
middleware can reach uvicorn's connection.  So the app is a `PeerSeeingFastAPI`, whose
`__call__` runs `PeerMiddleware` first and FastAPI's own `__call__` inside it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from app.config import Settings

log = logging.getLogger("app.http.peer")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"x-real-ip", b"forwarded"})
_UNREACHABLE = object()


def connection_peer(receive: Any) -> Any:
    """(host, port) of the connection `receive` reads from; None for a peer without an
    address (a Unix socket); `_UNREACHABLE` when the server does not expose the connection."""
    cycle = getattr(receive, "__self__", None)
    get_extra_info = getattr(getattr(cycle, "transport", None), "get_extra_info", None)
    if get_extra_info is None:
        return _UNREACHABLE
    peer = get_extra_info("peername")
    if isinstance(peer, tuple | list) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


def _named_by_forwarding(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    host = str(client[0])
    return any(name.lower() in FORWARDING_HEADERS and host in value.decode("latin-1")
               for name, value in scope.get("headers", ()))


def _server_config(receive: Any) -> Any:
    """uvicorn's Config, reachable from the lifespan's `receive`; None under other servers."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    return config if hasattr(config, "proxy_headers") else None


def _trusts_loopback(settings: Settings) -> bool:
    loopback = ipaddress.ip_address("127.0.0.1")
    return any(loopback in ipaddress.ip_network(cidr, strict=False)
               for cidr in settings.trusted_proxies)


class PeerMiddleware:
    """Puts the TCP peer into `scope["client"]` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            self._announce(receive)
        elif kind in ("http", "websocket"):
            peer = connection_peer(receive)
            if peer is not _UNREACHABLE:
                scope["client"] = peer
            elif _named_by_forwarding(scope):
                scope["client"] = None
                self._warn_unseen()
        await self.app(scope, receive, send)

    def _announce(self, receive: Any) -> None:
        config = _server_config(receive)
        if config is None:
            self._warn_unseen()
        elif config.proxy_headers:
            log.info("uvicorn rewrites client addresses from X-Forwarded-For sent by %s "
                     "(--proxy-headers); this service ignores that and reads each "
                     "connection's peer itself: only its own trusted proxies are believed",
                     config.forwarded_allow_ips)
        if os.environ.get("VERCEL") and not _trusts_loopback(self.settings):
            log.warning("on Vercel every request reaches the service from the runtime's "
                        "proxy at 127.0.0.1, so all callers share one address; set "
                        "TRUSTED_PROXIES=127.0.0.1/32 to read the client address from the "
                        "X-Forwarded-For that Vercel's edge overwrites")

    def _warn_unseen(self) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning("CANNOT SEE THE TCP PEER under this server: a request whose client "
                    "address one of its own forwarding headers names is treated as coming "
                    "from an unknown address (refused by CRON_IP_ALLOWLIST, one shared "
                    "failure budget).  Serve with uvicorn (voyagesmart-cron serve) to get "
                    "real client addresses")


class PeerSeeingFastAPI(FastAPI):
    """FastAPI with `PeerMiddleware` in front of FastAPI's own `__call__` (see above).

    Still a FastAPI instance, so `fastapi run`, Vercel and the tests find and use it as one.
    """

    _peer: PeerMiddleware | None = None

    def see_peers(self, settings: Settings) -> None:
        self._peer = PeerMiddleware(super().__call__, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._peer is None:
            await super().__call__(scope, receive, send)
        else:
            await self._peer(scope, receive, send)
