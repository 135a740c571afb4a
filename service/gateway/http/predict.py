"""``POST /predict/{endpoint}`` (the plain JSON prediction API for applications),
``POST /explain/{endpoint}`` (the same, with why) and ``GET /endpoints``. The handler only moves headers and bodies: ``Gateway.predict`` owns the call."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.codecs.plain import PlainRequest, PredictionEncoder, decode_plain
from service.gateway.http.common import gateway_of
from service.gateway.process import Answer, Call, Gateway
from service.http.auth import require_token
from service.http.body import read_body
from service.http.responses import JSON, AnswerResponse, json_response
from traffic.table import EndpointTable


async def predict(request: Request) -> Response:
    gateway = gateway_of(request)
    answer = await gateway.predict(plain_call(request, gateway))
    content = msgspec.json.encode(plain_body(answer))
    return AnswerResponse(content, headers=answer.headers(), media_type=JSON)


async def explain(request: Request) -> Response:
    """``POST /explain/{endpoint}[?target=<class>]``: the body and routing of ``/predict``; the
    answer is ``/predict``'s with one SHAP explanation per row (service/gateway/explain.py)."""
    gateway = gateway_of(request)
    answer, explanations = await gateway.explain(
        plain_call(request, gateway), request.query_params.get("target")
    )
    body = {**plain_body(answer), "explanations": [e.to_dict() for e in explanations]}
    return json_response(body, headers=answer.headers())


def plain_call(request: Request, gateway: Gateway) -> Call:
    """The call a plain JSON body makes (its rows as lists or records; its key field, if any)."""
    limit = gateway.config.limits.max_body_bytes

    async def read(table: EndpointTable) -> PlainRequest:
        return decode_plain(await read_body(request, limit), table.policy.key_field)

    return Call(request.path_params["endpoint"], "plain", request.headers, read)


def plain_body(answer: Answer) -> dict:
    """The plain JSON answer: who answered, and each row's prediction."""
    card = answer.route.model.card
    body = {
        "request_id": answer.request_id,
        "endpoint": answer.route.endpoint,
        "variant": answer.route.variant.name,
        "model": card.name,
        "model_version": card.version,
        "predictions": PredictionEncoder.of(card).predictions(answer.outputs),
    }
    if answer.correlation_id is not None:
        body["correlation_id"] = answer.correlation_id
    return body


async def list_endpoints(request: Request) -> Response:
    """``GET /endpoints``: each endpoint's variants, models and features (read-only). Callers
    without the admin token see the variants that take traffic; dark ones (weight 0, shadows)
    only with it. ``access.endpoints: token`` closes the route to anonymous callers."""
    gateway = gateway_of(request)
    admin = gateway.is_admin(request.headers)
    if gateway.config.access.endpoints == "token" and not admin:
        require_token(
            request,
            gateway.secrets.admin_token,
            off="/endpoints needs the admin token (access.endpoints), which is not set",
        )
    dataplane = gateway.dataplane
    listing = {}
    for name, table in dataplane.snapshot.tables.items():
        variants = []
        for variant in table.variants:
            if not (admin or variant.serving):
                continue
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
