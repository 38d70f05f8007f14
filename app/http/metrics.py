"""`GET /metrics`: Prometheus text format, behind `METRICS_TOKEN` or the cron secret."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.http.deps import MetricsReader

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
def get_metrics(request: Request, _reader: MetricsReader) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
