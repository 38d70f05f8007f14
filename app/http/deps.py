"""Dependencies shared by the routes: settings, engine, runner, and authentication.

Authentication is one dependency per surface, each the same call: `authentication`
(app/http/auth.py) decides, a refusal is counted against the address's failure budget and
audited (app/http/guard.py), and the route receives the `Auth` the audit reads too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from app.http.auth import Auth, Surface, authentication
from app.http.guard import refuse_failed_auth


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


# --- authentication: one dependency per surface, one rule (app/http/auth.py) -----------
def _authenticated(request: Request, settings: Settings, surface: Surface) -> Auth:
    """The request's `Auth` for `surface`; a refusal is counted, audited and raised."""
    auth = authentication(request, settings, surface)
    if not auth.refused:
        return auth
    if surface is not Surface.CRON:
        # The cron guard counted and audits this call itself (app/http/guard.py).
        refused = refuse_failed_auth(request)
        if refused is not None:
            raise HTTPException(429, "too many failed authentications; retry later",
                                headers={"Retry-After": refused.headers["Retry-After"]})
    raise auth.error()


def cron_caller(request: Request, settings: SettingsDep) -> Auth:
    return _authenticated(request, settings, Surface.CRON)


def metrics_reader(request: Request, settings: SettingsDep) -> Auth:
    return _authenticated(request, settings, Surface.METRICS)


def health_viewer(request: Request, settings: SettingsDep) -> Auth:
    """Anonymous is fine here; only a credential that is wrong is refused."""
    return _authenticated(request, settings, Surface.HEALTH)


def operator(request: Request, settings: SettingsDep) -> Auth:
    return _authenticated(request, settings, Surface.DASHBOARD)


# Every route declares one of these (tests/http/test_route_authentication.py walks them).
AUTHENTICATIONS = (cron_caller, metrics_reader, health_viewer, operator)

CronCaller = Annotated[Auth, Depends(cron_caller)]
MetricsReader = Annotated[Auth, Depends(metrics_reader)]
HealthViewer = Annotated[Auth, Depends(health_viewer)]
Operator = Annotated[Auth, Depends(operator)]
