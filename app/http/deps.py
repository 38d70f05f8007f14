"""Dependencies shared by the routes: settings, engine, runner, bearer authentication."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner

MAX_AUTH_HEADER = 1024


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner_factory()
    return runner


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
RunnerDep = Annotated[Runner, Depends(get_runner)]


def single_valued_query(request: Request) -> None:
    """Every query parameter at most once: `?dry_run=true&dry_run=false` is refused rather
    than read as whichever value a parser happens to keep."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name, _value in request.query_params.multi_items():
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        names = ", ".join(shown(name, 40) for name in repeated[:5])
        raise HTTPException(400, f"repeated query parameter(s): {names}; give each once")


def shown(value: str, limit: int = 64) -> str:
    """A client-supplied name as quoted back in an error: cut, so a huge one is not echoed."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} chars)"


class AuthError(HTTPException):
    def __init__(self, reason: str, status_code: int = 401) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="voyagesmart-cron"'}
        super().__init__(status_code=status_code, detail=reason, headers=headers)


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


def secret_matches(settings: Settings, token: str) -> bool:
    """The current secret or, during rotation, the previous one."""
    return matching_secret(token, [settings.cron_secret, settings.cron_secret_previous]) is not None


def require_cron_secret(request: Request, settings: SettingsDep) -> None:
    if "secret" in request.query_params or "token" in request.query_params:
        raise AuthError("the secret is never accepted in the query string; "
                        "send 'Authorization: Bearer <CRON_SECRET>'")
    token = presented_token(request)
    if not settings.cron_secret:
        raise AuthError("CRON_SECRET is not configured on this service")
    matched = matching_secret(token, [settings.cron_secret, settings.cron_secret_previous])
    if matched is None:
        raise AuthError("invalid credentials")
    if matched == 1:
        # Accepted through the previous secret: the audit log marks the call so an operator
        # rotating the secret can see which callers still need the new one.
        request.state.previous_secret = True


def has_cron_secret(request: Request, settings: Settings) -> bool:
    """True when the request carries a valid bearer secret (used for optional details)."""
    try:
        token = presented_token(request)
    except HTTPException:
        return False
    return bool(settings.cron_secret) and secret_matches(settings, token)
