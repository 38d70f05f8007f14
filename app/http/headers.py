"""Headers every answer carries: security headers, and `Cache-Control: no-store` by default.

Set with `setdefault`, so a route that needs its own value (the dashboard's narrower CSP,
its same-origin referrer policy) keeps it.  In production HSTS is added.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from app.config import Settings

_STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
# Swagger UI (development only) loads its script and styles from a CDN.
_DOCS_PATHS = ("/docs", "/redoc")


async def security_headers(request: Request,
                           call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    for name, value in _BASE_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.url.path.startswith(_DOCS_PATHS):
        # A route that serves HTML (the dashboard) sets its own, narrower-than-default CSP.
        response.headers.setdefault("Content-Security-Policy", _STRICT_CSP)
    settings: Settings = request.app.state.settings
    if settings.is_production:
        response.headers.setdefault("Strict-Transport-Security",
                                    "max-age=63072000; includeSubDomains")
    return response


async def no_store(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response
