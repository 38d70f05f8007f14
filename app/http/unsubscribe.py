"""`/unsubscribe`: one-click unsubscribe from user emails (RFC 8058), no login.

- `POST /unsubscribe?token=T` with the form body `List-Unsubscribe=One-Click` records the
  opt-out (a mail client's unsubscribe button sends exactly that; so does the page's).
- `GET /unsubscribe?token=T` only shows a small page with that button: mail scanners and
  link previews follow GET links, and must never unsubscribe anyone.

Every bad token gets the same answer (400), whatever is wrong with it, and counts as a
failed authentication of its address (`AUTH_FAILURE_LIMIT`, app/http/guard.py): guessing
links is as slow as guessing the cron secret.  Valid requests count against
`UNSUBSCRIBE_RATE_LIMIT` per address and minute.  The token is never logged (the audit
row keeps the path only) and the page names the list, never the address.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import exc as sa_exc

from app.http.deps import EngineDep
from app.http.guard import Verdict, defenses_of, refuse_failed_auth
from app.mail import templates, unsubscribe
from app.mail.unsubscribe import ALL, Links, Subscription

TEMPLATES = Jinja2Templates(env=templates.ENV)
# No script, no style from anywhere; the one form posts back here.
CSP = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
ONE_CLICK = "One-Click"
WINDOW_SECONDS = 60

router = APIRouter(include_in_schema=False)

# Any length: whatever is wrong with a token gets the same answer (`Links.read`).
TokenQuery = Annotated[str | None, Query()]


def _page(request: Request, status_code: int, **context: object) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, "unsubscribe.html",
                                          {"state": "", **context}, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    return response


def _admit(request: Request, token: str | None) -> Subscription | Response:
    """The subscription a token names, or the answer to send instead (400, 429, 503)."""
    defenses = defenses_of(request)
    address = defenses.address_of(request)
    blocked = defenses.failure_wait(address)
    if blocked is not None:
        return Verdict(429, "too many invalid links from this address; retry later",
                       "rate_limited", blocked).response()
    links = Links(request.app.state.settings)
    if not links.configured:
        return _page(request, 503, state="unavailable")
    subscription = links.read(token)
    if subscription is None:
        refused = refuse_failed_auth(request)
        return refused if refused is not None else _page(request, 400, state="invalid")
    wait = defenses.hit(f"unsubscribe:{address}", request.app.state.settings
                        .unsubscribe_rate_limit, WINDOW_SECONDS)
    if wait is not None:
        return Verdict(429, "too many requests from this address; retry later",
                       "rate_limited", wait).response()
    return subscription


@router.get("/unsubscribe")
@router.get("/unsubscribe/")
def confirm(request: Request, engine: EngineDep, token: TokenQuery = None) -> Response:
    admitted = _admit(request, token)
    if not isinstance(admitted, Subscription):
        return admitted
    try:
        left = unsubscribe.left(engine, admitted.user_id)
    except sa_exc.SQLAlchemyError:
        return _page(request, 503, state="unavailable")
    state = "done" if admitted.list in left or ALL in left else "ask"
    return _page(request, 200, state=state, list_name=admitted.list_name,
                 everything=ALL in left)


@router.post("/unsubscribe")
@router.post("/unsubscribe/")
def one_click(
    request: Request,
    engine: EngineDep,
    token: TokenQuery = None,
    list_unsubscribe: Annotated[str | None, Form(alias="List-Unsubscribe",
                                                 max_length=32)] = None,
    scope: Annotated[str | None, Form(max_length=16)] = None,
    via: Annotated[str | None, Form(max_length=16)] = None,
) -> Response:
    admitted = _admit(request, token)
    if not isinstance(admitted, Subscription):
        return admitted
    if list_unsubscribe != ONE_CLICK:
        return _page(request, 400, state="bad_request")
    everything = scope == ALL
    try:
        unsubscribe.record(engine, admitted.user_id, ALL if everything else admitted.list,
                           source="page" if via == "page" else "one-click",
                           now=request.app.state.clock())
    except sa_exc.SQLAlchemyError:
        return _page(request, 503, state="unavailable")
    return _page(request, 200, state="done", list_name=admitted.list_name,
                 everything=everything)
