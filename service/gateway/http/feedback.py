"""``POST /feedback``: ground-truth labels (or target values) for earlier predictions, and business
rewards for an endpoint's experiment, by the gateway's request id (the ``request_id`` of the answer).

Body: ``{"labels": [{"request_id": "...", "label": value or [value per row]}, ...],
"rewards": [{"request_id": "...", "metric": "converted", "value": 1}, ...]}`` (either list may be
left out; a single label object alone is taken too). Every item is checked before anything is
stored: the id must be one the gateway gives (``<endpoint>:<32 hex digits>``) for an endpoint it
serves, a label a class (or, for a regressor, a finite number) of that endpoint's models, a reward
a metric the endpoint's experiment declares with a finite value (0 or 1 for a binary metric); one
bad item refuses the whole call with a 400 naming it and the reason. The monitor stores them
durably before this answers 200, labels first. The same value twice is fine (idempotent); a
different value for an id (and metric) that has one is refused (409, the others are stored), and
so is a reward that comes after its experiment's ``join_window_s`` (422, the others are stored).
Labels and rewards may come before their prediction reaches the monitor: they are held (bounded in
number, expired after ``monitor.label_retention_s``) and joined when it arrives, if their id is
signed as an answer the gateway records (service/names.py ``RequestIds``): not a made-up id, nor a
refusal's or an explanation's. A label held so
cannot be checked against its request's rows; one that then does not fit them gives way to the
next label that does (not a 409).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.codecs import decode_json
from service.errors import BadRequest, Conflict, NotFound, Overloaded, TooLate
from service.gateway.http.common import gateway_of
from service.gateway.process import Gateway
from service.http.body import read_body
from service.http.responses import json_response
from service.labels import label_problem
from service.names import endpoint_of
from service.rewards import reward_problem

MAX_ITEMS = 10_000
"""Labels and rewards one call may carry, together."""
FIELDS = {"labels": {"request_id", "label"}, "rewards": {"request_id", "metric", "value"}}


def _endpoint(gateway: Gateway, item: object, where: str, kind: str) -> str:
    """The endpoint whose answer the item is about (400 unless it is well-formed and served)."""
    if not isinstance(item, dict) or set(item) != FIELDS[kind]:
        shape = ", ".join(f'"{name}": ...' for name in sorted(FIELDS[kind]))
        raise BadRequest(f"{where} must be {{{shape}}}")
    request_id = item["request_id"]
    endpoint = endpoint_of(request_id)
    if endpoint is None:
        raise BadRequest(
            f"{where}: request_id must be the request_id of a gateway answer "
            f"('<endpoint>:<32 hex digits>')"
        )
    if endpoint not in gateway.dataplane.snapshot.tables:
        raise BadRequest(f"{where} ({request_id}): no endpoint {endpoint!r}")
    return endpoint


def _checked_label(gateway: Gateway, item: dict, position: int) -> dict:
    where = f"labels[{position}]"
    endpoint = _endpoint(gateway, item, where, "labels")
    snapshot = gateway.dataplane.snapshot
    cards = [snapshot.models[v.model].card for v in snapshot.tables[endpoint].variants]
    problem = label_problem(cards, item["label"])
    if problem is not None:
        raise BadRequest(f"{where} ({item['request_id']}): {problem}; nothing was stored")
    return item


def _checked_reward(gateway: Gateway, item: dict, position: int) -> dict:
    where = f"rewards[{position}]"
    endpoint = _endpoint(gateway, item, where, "rewards")
    configured = gateway.config.endpoints.get(endpoint)
    experiment = configured.experiment if configured else None
    problem = reward_problem(experiment, item["metric"], item["value"])
    if problem is None and isinstance(item["value"], list):
        if len(item["value"]) > gateway.config.limits.max_rows:
            problem = f"more values than limits.max_rows ({gateway.config.limits.max_rows})"
    if problem is not None:
        raise BadRequest(f"{where} ({item['request_id']}): {problem}; nothing was stored")
    return item


def _items(data: object) -> dict[str, list]:
    """The labels and rewards of a body, as lists (a lone label object is a list of one)."""
    if not isinstance(data, dict) or not data.keys() & FIELDS.keys():
        return {"labels": [data], "rewards": []}
    unknown = sorted(data.keys() - FIELDS.keys())
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}: the body has 'labels' and/or 'rewards'")
    items = {kind: data.get(kind, []) for kind in FIELDS}
    if not all(isinstance(v, list) for v in items.values()):
        raise BadRequest("'labels' and 'rewards' must be lists")
    if not 0 < sum(len(v) for v in items.values()) <= MAX_ITEMS:
        raise BadRequest(f"a call carries 1 to {MAX_ITEMS} labels and rewards")
    return items


async def feedback(request: Request) -> Response:
    """Labels have a budget of their own (``admission.feedback_concurrency`` calls in flight per
    worker), so a flood of them cannot crowd out predictions, nor predictions them. A call counts
    once its body is here: clients sending theirs a few bytes at a time would otherwise use up
    the budget."""
    gateway = gateway_of(request)
    if not gateway.recorder.enabled:
        raise NotFound(
            "feedback needs a monitor: set monitor.url (or monitor.urls) in gateway.yaml"
        )
    body = await read_body(request, gateway.config.limits.max_body_bytes)
    if gateway.feedback_in_flight >= gateway.config.admission.feedback_concurrency:
        gateway.metrics.shed_series("feedback", "in_flight").inc()
        raise Overloaded("too many /feedback calls in flight: retry shortly (nothing was stored)")
    gateway.feedback_in_flight += 1
    try:
        return await _store_feedback(body, gateway)
    finally:
        gateway.feedback_in_flight -= 1


async def _store_feedback(body: bytes, gateway: Gateway) -> Response:
    items = _items(decode_json(body))
    labels = [_checked_label(gateway, item, i) for i, item in enumerate(items["labels"])]
    rewards = [_checked_reward(gateway, item, i) for i, item in enumerate(items["rewards"])]
    results = []
    for kind, checked in (("labels", labels), ("rewards", rewards)):
        if checked:
            results += await gateway.recorder.send_feedback(kind, checked)
    refused = {
        outcome: [r["request_id"] for r in results if r["outcome"] == outcome]
        for outcome in ("conflict", "late")
    }
    if refused["conflict"]:
        raise Conflict(
            f"request id(s) {refused['conflict'][:10]} already have a different value; the rest "
            "were stored"
        )
    if refused["late"]:
        raise TooLate(
            f"reward(s) for {refused['late'][:10]} came after the experiment's join window: not "
            "stored; the rest were stored"
        )
    return json_response({"results": results})
