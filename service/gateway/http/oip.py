"""The Open Inference Protocol v2 REST API (KServe v2 / Triton), so tritonclient works unchanged.

An OIP model is a gateway endpoint; ``/versions/{v}`` pins the variant serving model version v.
Health answers are judged by status code only; errors are ``{"error": message}``.
"""

from __future__ import annotations

import json

from prometheus_client.samples import Sample
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from service.codecs.oip import (
    HEADER_LENGTH,
    InferRequest,
    decode_infer_request,
    encode_infer_response,
)
from service.errors import BadRequest
from service.exposition import sample_total
from service.gateway import repository
from service.gateway.http.common import gateway_of
from service.gateway.process import Answer, Call, Gateway
from service.http.body import read_body
from service.http.responses import AnswerResponse, json_response
from service.model_card import ModelCard
from traffic.table import EndpointTable, VariantSpec


async def server_metadata(request: Request) -> Response:
    return json_response(repository.SERVER_METADATA)


async def server_live(request: Request) -> Response:
    return json_response({"live": True})


async def server_ready(request: Request) -> Response:
    gateway_of(request)
    return json_response({"ready": True})


def _described(request: Request) -> tuple[EndpointTable, list[VariantSpec]]:
    params = request.path_params
    return repository.described(
        gateway_of(request), request.headers, params["model"], params.get("version")
    )


async def model_ready(request: Request) -> Response:
    table, _ = _described(request)
    return json_response({"name": table.endpoint, "ready": True})


async def model_metadata(request: Request) -> Response:
    params = request.path_params
    return json_response(
        repository.model_metadata(
            gateway_of(request), request.headers, params["model"], params.get("version")
        )
    )


async def model_config(request: Request) -> Response:
    """A Triton-style model config (perf_analyzer and tritonclient read it)."""
    params = request.path_params
    return json_response(
        repository.model_config(
            gateway_of(request), request.headers, params["model"], params.get("version")
        )
    )


def _variant_stats(
    collected: list[Sample], endpoint: str, variant: VariantSpec, card: ModelCard
) -> dict:
    """Triton-style statistics for one variant, summed over every worker's samples."""
    requests = {"endpoint": endpoint, "model_version": variant.model_version}
    run = {"model": card.name, "model_version": card.version}
    succeeded = sample_total(collected, "gateway_requests_total", outcome="ok", **requests)
    answered = sample_total(collected, "gateway_requests_total", **requests)
    latency = sample_total(
        collected, "gateway_request_duration_seconds_sum", endpoint=endpoint, variant=variant.name
    )
    runs = sample_total(collected, "gateway_inference_batch_rows_count", **run)
    compute = sample_total(collected, "gateway_inference_duration_seconds_sum", **run)

    def stat(count: float, seconds: float = 0.0) -> dict:
        return {"count": int(count), "ns": int(seconds * 1e9)}

    return {
        "name": endpoint,
        "version": variant.model_version,
        "inference_count": int(sample_total(collected, "gateway_inference_batch_rows_sum", **run)),
        "execution_count": int(runs),
        "inference_stats": {
            "success": stat(succeeded, latency),
            "fail": stat(answered - succeeded),
            "compute_infer": stat(runs, compute),
        },
    }


async def model_stats(request: Request) -> Response:
    """``/stats``: per-version request and run counts (tritonclient's get_inference_statistics)."""
    table, variants = _described(request)
    gateway = gateway_of(request)
    cards = [gateway.dataplane.model(v).card for v in variants]
    collected = await gateway.metrics.recent_samples()
    stats = [_variant_stats(collected, table.endpoint, v, c) for v, c in zip(variants, cards)]
    return json_response({"model_stats": stats})


async def repository_index(request: Request) -> Response:
    return json_response(repository.repository_index(gateway_of(request), request.headers))


def infer_call(request: Request, gateway: Gateway) -> Call:
    """The call an OIP infer body makes (JSON, or Triton's binary extension)."""
    limit = gateway.config.limits.max_body_bytes

    async def read(table: EndpointTable) -> InferRequest:
        return decode_infer_request(
            await read_body(request, limit), request.headers.get(HEADER_LENGTH)
        )

    return Call(
        request.path_params["model"],
        "oip",
        request.headers,
        read,
        pin_version=request.path_params.get("version"),
    )


def _infer_response(answer: Answer) -> tuple[bytes, int | None]:
    return encode_infer_response(
        answer.route.endpoint,
        answer.route.model.card.version,
        answer.decoded,
        answer.outputs,
        {"request_id": answer.request_id},
    )


async def explain(request: Request) -> Response:
    """``POST /v2/models/{model}[/versions/{v}]/explain[?target=<class>]``: an infer request
    answered as infer is, with ``explanations`` beside ``outputs`` (JSON only)."""
    gateway = gateway_of(request)
    answer, explanations = await gateway.explain(
        infer_call(request, gateway), request.query_params.get("target")
    )
    content, header_length = _infer_response(answer)
    if header_length is not None:
        raise BadRequest("explanations are answered in JSON: ask for no binary outputs")
    body = {**json.loads(content), "explanations": [e.to_dict() for e in explanations]}
    return json_response(body, headers=answer.headers())


async def infer(request: Request) -> Response:
    """Infer; ``/versions/{v}`` pins the variant serving model version v. The gateway's request id
    comes back in the answer's ``parameters.request_id`` and the ``x-gateway-request-id`` header;
    the body's ``id`` is the caller's, echoed as the protocol says."""
    gateway = gateway_of(request)
    answer = await gateway.predict(infer_call(request, gateway))
    content, header_length = _infer_response(answer)
    headers = answer.headers()
    if header_length is None:
        return AnswerResponse(content, headers=headers, media_type="application/json")
    headers["Inference-Header-Content-Length"] = str(header_length)
    return AnswerResponse(content, headers=headers, media_type="application/octet-stream")


def _with_versions(path: str, endpoint, methods: list[str]) -> list[HttpRoute]:
    """The route for ``/v2/models/{model}{path}`` and its ``/versions/{version}`` twin."""
    return [
        HttpRoute(f"/v2/models/{{model}}{path}", endpoint, methods=methods),
        HttpRoute(f"/v2/models/{{model}}/versions/{{version}}{path}", endpoint, methods=methods),
    ]


ROUTES = [
    HttpRoute("/v2", server_metadata, methods=["GET"]),
    HttpRoute("/v2/health/live", server_live, methods=["GET"]),
    HttpRoute("/v2/health/ready", server_ready, methods=["GET"]),
    HttpRoute("/v2/repository/index", repository_index, methods=["POST"]),
    *_with_versions("", model_metadata, ["GET"]),
    *_with_versions("/ready", model_ready, ["GET"]),
    *_with_versions("/config", model_config, ["GET"]),
    *_with_versions("/stats", model_stats, ["GET"]),
    *_with_versions("/infer", infer, ["POST"]),
    *_with_versions("/explain", explain, ["POST"]),
]
