"""Who is calling, decided once per request: the one rule of authentication.

`authenticate(request, settings, surface)` reads the credential each surface accepts and
returns an `Auth` (who, how, outcome).  It is the only place that compares a secret:

- `cron` (`/api/cron/*`): `Authorization: Bearer <CRON_SECRET>`, or the previous secret
  during a rotation.  A secret in the query string is refused even when it is right.
- `metrics` (`/metrics`): a bearer `METRICS_TOKEN`, or the cron secret.
- `health` (`/health`): optional; a valid cron secret adds the details, any other
  `Authorization` header is a failed authentication (else a free oracle for the secret).
- `dashboard`: HTTP Basic, `DASHBOARD_USER` and `DASHBOARD_PASSWORD`.

The result is computed once and kept with the request (`authentication`), so the route's
dependency (app/http/deps.py), the cron guard's rate limits (app/http/guard.py) and the
audit row (app/http/audit.py) all read the same value.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from enum import StrEnum

from fastapi import HTTPException, Request
from pydantic import SecretStr

from app.config import Settings

MAX_AUTH_HEADER = 1024
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="voyagesmart-cron"'}
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="voyagesmart-cron dashboard"'}
_STATE_KEY = "authentication"


class Surface(StrEnum):
    CRON = "cron"
    METRICS = "metrics"
    HEALTH = "health"
    DASHBOARD = "dashboard"


class Credential(StrEnum):
    """How the caller proved who it is (names of credentials, not their values)."""

    NONE = "none"
    CRON_SECRET = "cron_secret"  # noqa: S105
    PREVIOUS_CRON_SECRET = "previous_cron_secret"  # noqa: S105  (marked in the audit log)
    METRICS_TOKEN = "metrics_token"  # noqa: S105
    BASIC = "basic"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    ANONYMOUS = "anonymous"  # nothing presented where nothing is required (/health)
    REFUSED = "refused"


@dataclass(frozen=True)
class Auth:
    """The decision about one request; `reason` and `status` say why a refusal is one."""

    surface: Surface
    who: str | None
    how: Credential
    outcome: Outcome
    reason: str = ""
    status: int = 401

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSED

    def error(self) -> HTTPException:
        """The answer to a refusal (before the failure budget had its say)."""
        challenge = BASIC_CHALLENGE if self.surface is Surface.DASHBOARD else BEARER_CHALLENGE
        return HTTPException(self.status, self.reason, headers=challenge)


class AuthError(HTTPException):
    def __init__(self, reason: str, status_code: int = 401) -> None:
        super().__init__(status_code=status_code, detail=reason, headers=BEARER_CHALLENGE)


def presented_token(request: Request) -> str:
    """The bearer token of the request, or an AuthError saying what is wrong with it."""
    header = request.headers.get("authorization")
    if header is None:
        raise AuthError("missing Authorization header (expected 'Bearer <CRON_SECRET>')")
    if len(header) > MAX_AUTH_HEADER:
        raise AuthError("Authorization header too long", status_code=400)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must use the Bearer scheme")
    return token.strip()


def matching_secret(token: str, candidates: list[SecretStr | None]) -> int | None:
    """Index of the candidate equal to `token`, compared in constant time, or None.

    Every candidate is compared, so timing does not say which one matched.
    """
    presented = token.encode()
    found: int | None = None
    for index, secret in enumerate(candidates):
        if secret is not None and hmac.compare_digest(
            presented, secret.get_secret_value().encode()
        ):
            found = index
    return found


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """User and password of an `Authorization: Basic` header, None when absent or malformed.

    Parsed here rather than by fastapi's HTTPBasic, which answers a malformed header itself
    and so would skip the failure count and the audit row.
    """
    scheme, _, param = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not param.strip() or len(param) > MAX_AUTH_HEADER:
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else None


def _refused(surface: Surface, reason: str, status: int = 401) -> Auth:
    return Auth(surface, None, Credential.NONE, Outcome.REFUSED, reason, status)


_SECRET_HOLDERS = (Credential.CRON_SECRET, Credential.PREVIOUS_CRON_SECRET)
# Who holds each bearer credential: the schedulers hold the cron secret, monitors the token.
_HOLDER = {Credential.CRON_SECRET: "scheduler", Credential.PREVIOUS_CRON_SECRET: "scheduler",
           Credential.METRICS_TOKEN: "monitor"}


def _bearer(request: Request, settings: Settings, surface: Surface) -> Auth:
    try:
        token = presented_token(request)
    except HTTPException as exc:
        return _refused(surface, str(exc.detail), exc.status_code)
    candidates: list[SecretStr | None] = []
    holders: list[Credential] = []
    if surface is Surface.METRICS:
        candidates.append(settings.metrics_token)
        holders.append(Credential.METRICS_TOKEN)
    elif not settings.cron_secret:
        return _refused(surface, "CRON_SECRET is not configured on this service")
    if settings.cron_secret:
        candidates += [settings.cron_secret, settings.cron_secret_previous]
        holders += _SECRET_HOLDERS
    matched = matching_secret(token, candidates)
    if matched is None:
        return _refused(surface, "invalid credentials")
    how = holders[matched]
    return Auth(surface, _HOLDER[how], how, Outcome.ACCEPTED)


def _operator(request: Request, settings: Settings) -> Auth:
    user = settings.dashboard_user or ""
    password = settings.dashboard_password.get_secret_value() if settings.dashboard_password \
        else ""
    credentials = basic_credentials(request)
    given_user, given_password = credentials or ("", "")
    # Both compared every time, in constant time, so timing says nothing about which failed.
    ok = hmac.compare_digest(given_user.encode(), user.encode())
    ok &= hmac.compare_digest(given_password.encode(), password.encode())
    if credentials is None or not ok or not user:
        return _refused(Surface.DASHBOARD, "dashboard credentials required")
    return Auth(Surface.DASHBOARD, user, Credential.BASIC, Outcome.ACCEPTED)


def authenticate(request: Request, settings: Settings, surface: Surface) -> Auth:
    """The decision for `surface` (see the module's docstring); never raises."""
    if surface is Surface.DASHBOARD:
        return _operator(request, settings)
    if surface is Surface.CRON and ("secret" in request.query_params
                                    or "token" in request.query_params):
        return _refused(surface, "the secret is never accepted in the query string; "
                                 "send 'Authorization: Bearer <CRON_SECRET>'")
    decided = _bearer(request, settings, surface)
    if surface is Surface.HEALTH and not decided.accepted:
        if "authorization" not in request.headers:
            return Auth(surface, None, Credential.NONE, Outcome.ANONYMOUS)
        return _refused(surface, "invalid credentials")
    return decided


def authentication(request: Request, settings: Settings, surface: Surface) -> Auth:
    """`authenticate`, once per request and surface: later readers get the same result."""
    decided: dict[Surface, Auth] = request.scope.setdefault("state", {}).setdefault(
        _STATE_KEY, {})
    if surface not in decided:
        decided[surface] = authenticate(request, settings, surface)
    return decided[surface]
