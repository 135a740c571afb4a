"""``POST /feedback``: ground-truth labels (or target values) for earlier predictions, by the
gateway's request id (the ``request_id`` of the answer).

Body: ``{"labels": [{"request_id": "...", "label": value or [value per row]}, ...]}`` (or one such
object alone). Every label is checked before anything is stored: the id must be one the gateway
gives (``<endpoint>:<32 hex digits>``) for an endpoint it serves, and the label a class (or, for a
regressor, a finite number) of that endpoint's models; one bad label refuses the whole call with a
400 naming its request id and the reason. The monitor stores the labels durably before this
answers 200. The same label twice is fine (idempotent); a different label for an id that has one is
refused (409, the others are stored). Labels may come before their prediction reaches the monitor:
they are held (bounded in number, expired after ``monitor.label_retention_s``) and joined when it
arrives.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.codecs import decode_json
from service.errors import BadRequest, Conflict, NotFound, Overloaded
from service.gateway.http.common import gateway_of
from service.gateway.process import Gateway
from service.http.body import read_body
from service.http.responses import json_response
from service.labels import label_problem
from service.names import endpoint_of

MAX_LABELS = 10_000


def _checked(gateway: Gateway, item: object, position: int) -> dict:
    if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
        raise BadRequest(f'labels[{position}] must be {{"request_id": ..., "label": ...}}')
    request_id, label = item["request_id"], item["label"]
    endpoint = endpoint_of(request_id)
    if endpoint is None:
        raise BadRequest(
            f"labels[{position}]: request_id must be the request_id of a gateway answer "
            f"('<endpoint>:<32 hex digits>')"
        )
    snapshot = gateway.dataplane.snapshot
    table = snapshot.tables.get(endpoint)
    if table is None:
        raise BadRequest(f"labels[{position}] ({request_id}): no endpoint {endpoint!r}")
    cards = [snapshot.models[v.model].card for v in table.variants]
    problem = label_problem(cards, label)
    if problem is not None:
        raise BadRequest(f"labels[{position}] ({request_id}): {problem}; nothing was stored")
    return {"request_id": request_id, "label": label}


async def feedback(request: Request) -> Response:
    """Labels have a budget of their own (``admission.feedback_concurrency`` calls in flight per
    worker), so a flood of them cannot crowd out predictions, nor predictions them."""
    gateway = gateway_of(request)
    if not gateway.recorder.enabled:
        raise NotFound("feedback needs a monitor: set monitor.url in gateway.yaml")
    if gateway.feedback_in_flight >= gateway.config.admission.feedback_concurrency:
        gateway.metrics.shed.labels("feedback", "in_flight").inc()
        raise Overloaded("too many /feedback calls in flight: retry shortly (nothing was stored)")
    gateway.feedback_in_flight += 1
    try:
        return await _store_labels(request, gateway)
    finally:
        gateway.feedback_in_flight -= 1


async def _store_labels(request: Request, gateway: Gateway) -> Response:
    body = await read_body(request, gateway.config.limits.max_body_bytes)
    data = decode_json(body)
    items = data.get("labels") if isinstance(data, dict) and "labels" in data else [data]
    if not isinstance(items, list) or not items or len(items) > MAX_LABELS:
        raise BadRequest(f"'labels' must be a list of 1 to {MAX_LABELS} labels")
    labels = [_checked(gateway, item, i) for i, item in enumerate(items)]
    results = await gateway.recorder.send_labels(labels)
    conflicts = [r["request_id"] for r in results if r["outcome"] == "conflict"]
    if conflicts:
        raise Conflict(
            f"request id(s) {conflicts[:10]} already have a different label; the rest were stored"
        )
    return json_response({"results": results})
