"""``POST /predict/{endpoint}``: the plain JSON prediction API for applications."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.codecs.plain import decode_instances, instances_to_tensors
from service.http.body import read_body
from service.http.common import answer_headers, assign_request_id, gateway_of
from service.http.responses import json_response


async def predict(request: Request) -> Response:
    gateway = gateway_of(request)
    request_id = assign_request_id(request)
    endpoint = gateway.dataplane.endpoint(request.path_params["endpoint"])
    with gateway.account(endpoint.name, "plain") as account:
        body = await read_body(request, gateway.config.limits.max_body_bytes)
        instances = decode_instances(body)
        route = account.route = endpoint.route()
        outputs = await gateway.dataplane.infer(
            route, instances_to_tensors(instances, route.model.card)
        )
        card = route.model.card
        answer = {
            "request_id": request_id,
            "endpoint": endpoint.name,
            "variant": route.variant.name,
            "model": card.name,
            "model_version": card.version,
            "predictions": gateway.encoder(route).predictions(outputs),
        }
    return json_response(
        answer, headers=answer_headers(request_id, route.variant.name, card.version)
    )


async def list_endpoints(request: Request) -> Response:
    """``GET /endpoints``: each endpoint's variants, models and features (read-only)."""
    gateway = gateway_of(request)
    listing = {}
    for name, endpoint in gateway.dataplane.endpoints.items():
        variants = []
        for variant in endpoint.router.variants:
            card = endpoint.models[variant.name].card
            variants.append(
                {
                    "name": variant.name,
                    "role": variant.role,
                    "weight": variant.weight,
                    "model": card.name,
                    "model_version": card.version,
                    "task": card.task,
                    "features": list(card.feature_names),
                    "classes": list(card.class_labels),
                    "provider": endpoint.models[variant.name].provider,
                }
            )
        listing[name] = {"variants": variants}
    return json_response({"endpoints": listing})
