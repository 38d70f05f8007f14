"""`GET /metrics`: Prometheus text format, behind `METRICS_TOKEN` or the cron secret."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.defenses import blocked_response, refuse_failed_auth
from app.routes.deps import AuthError, SettingsDep, presented_token, secret_matches

router = APIRouter(tags=["monitoring"])

_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}


@router.get(
    "/metrics",
    summary="Prometheus metrics (bearer METRICS_TOKEN or CRON_SECRET)",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text exposition format",
              "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        400: {"description": "malformed Authorization header", **_ERROR},
        401: {"description": "missing or wrong token", **_ERROR},
        429: {"description": "too many failed authentications from this address", **_ERROR},
    },
)
def get_metrics(request: Request, settings: SettingsDep) -> Response:
    blocked = blocked_response(request)
    if blocked is not None:
        return blocked
    try:
        token = presented_token(request)
        ok = secret_matches(settings, token) if settings.cron_secret else False
        if settings.metrics_token is not None:
            ok |= hmac.compare_digest(token.encode(),
                                      settings.metrics_token.get_secret_value().encode())
        if not ok:
            raise AuthError("invalid credentials")
    except HTTPException as exc:
        refused = refuse_failed_auth(request)
        if refused is not None:
            return refused
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
