"""``POST /predict/{endpoint}``: the plain JSON prediction API for applications."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.codecs.plain import decode_instances, instances_to_tensors
from service.http.body import read_body
from service.http.common import (
    answer_headers,
    assign_request_id,
    gateway_of,
    pinned_variant,
    routing_key,
)
from service.http.responses import json_response


async def predict(request: Request) -> Response:
    gateway = gateway_of(request)
    request_id = assign_request_id(request)
    dataplane = gateway.dataplane
    table = dataplane.table(request.path_params["endpoint"])
    with gateway.account(table.endpoint, "plain", request_id) as account:
        body = await read_body(request, gateway.config.limits.max_body_bytes)
        instances, fields = decode_instances(body, table.policy.key_field)
        route = account.route = dataplane.route(
            table.endpoint, routing_key(request, table, fields), pin_variant=pinned_variant(request)
        )
        tensors = instances_to_tensors(instances, route.model.card)
        outputs = await dataplane.infer(route, tensors)
        gateway.answered(request_id, account, tensors, outputs)
        card = route.model.card
        answer = {
            "request_id": request_id,
            "endpoint": table.endpoint,
            "variant": route.variant.name,
            "model": card.name,
            "model_version": card.version,
            "predictions": gateway.encoder(route).predictions(outputs),
        }
    headers = answer_headers(request_id, route.variant.name, card.version)
    return json_response(answer, headers=headers)


async def list_endpoints(request: Request) -> Response:
    """``GET /endpoints``: each endpoint's variants, models and features (read-only)."""
    dataplane = gateway_of(request).dataplane
    listing = {}
    for name, table in dataplane.snapshot.tables.items():
        variants = []
        for variant in table.variants:
            model = dataplane.model(variant)
            variants.append(
                {
                    **variant.to_dict(),
                    "model_version": variant.model_version,
                    "task": model.card.task,
                    "features": list(model.card.feature_names),
                    "classes": list(model.card.class_labels),
                    "provider": model.provider,
                }
            )
        listing[name] = {"variants": variants}
    return json_response({"endpoints": listing})
