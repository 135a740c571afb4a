"""``POST /feedback``: ground-truth labels (or target values) for earlier predictions, by request id.

Body: ``{"labels": [{"request_id": "...", "label": value or [value per row]}, ...]}`` (or one such
object alone). The monitor stores each label durably before this answers 200. The same label twice
is fine (idempotent); a different label for an id that has one is refused (409, the others are
stored). Labels may come before their prediction: the monitor joins them when it arrives.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.codecs import decode_json
from service.errors import BadRequest, GatewayError, NotFound
from service.gateway import REQUEST_ID
from service.http.body import read_body
from service.http.common import gateway_of
from service.http.responses import json_response

MAX_LABELS = 10_000
SCALARS = (str, int, float, bool)


class LabelConflict(GatewayError):
    status = 409


def _checked(item: object, position: int) -> dict:
    if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
        raise BadRequest(f'labels[{position}] must be {{"request_id": ..., "label": ...}}')
    request_id, label = item["request_id"], item["label"]
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise BadRequest(f"labels[{position}]: request_id must be a request id the gateway gave")
    values = label if isinstance(label, list) else [label]
    if not values or not all(isinstance(v, SCALARS) for v in values):
        raise BadRequest(f"labels[{position}]: label must be a value or a non-empty list of values")
    return {"request_id": request_id, "label": label}


async def feedback(request: Request) -> Response:
    gateway = gateway_of(request)
    if not gateway.recorder.enabled:
        raise NotFound("feedback needs a monitor: set monitor.url in gateway.yaml")
    body = await read_body(request, gateway.config.limits.max_body_bytes)
    data = decode_json(body)
    items = data.get("labels") if isinstance(data, dict) and "labels" in data else [data]
    if not isinstance(items, list) or not items or len(items) > MAX_LABELS:
        raise BadRequest(f"'labels' must be a list of 1 to {MAX_LABELS} labels")
    labels = [_checked(item, i) for i, item in enumerate(items)]
    results = await gateway.recorder.send_labels(labels)
    conflicts = [r["request_id"] for r in results if r["outcome"] == "conflict"]
    if conflicts:
        raise LabelConflict(
            f"request id(s) {conflicts[:10]} already have a different label; the rest were stored"
        )
    return json_response({"results": results})
