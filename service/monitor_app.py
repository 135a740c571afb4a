"""The monitor's HTTP surface: records in (from every gateway worker and replica), labels in,
a summary, analysis runs, reports and rollouts out. One monitor process owns the store (service/monitor_bento.py starts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from monitors.records import decode_batch
from monitors.store import MonitorStore
from service.codecs import decode_json
from service.errors import BadRequest, NotFound
from service.http.body import read_body
from service.http.responses import EXCEPTION_HANDLERS, json_response
from service.metrics import CONTENT_TYPE, exposition

log = logging.getLogger("gateway.monitor")

MAX_BODY = 64 * 1024 * 1024


def _store(request: Request) -> MonitorStore:
    return request.app.state.store


async def _json_list(request: Request, key: str) -> list:
    body = await read_body(request, MAX_BODY)
    data = decode_json(body)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise BadRequest(f'the body must be {{"{key}": [...]}}')
    return data[key]


async def add_records(request: Request) -> Response:
    try:
        records = decode_batch(await read_body(request, MAX_BODY))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    stored = await anyio.to_thread.run_sync(_store(request).add_records, records)
    return json_response({"stored": stored})


async def add_labels(request: Request) -> Response:
    """Store each label durably before answering; the answer gives each one's outcome."""
    items = await _json_list(request, "labels")
    store = _store(request)

    def store_all() -> list[dict]:
        outcomes = store.add_labels((i["request_id"], i["label"]) for i in items)
        return [
            {"request_id": item["request_id"], "outcome": outcome.value}
            for item, outcome in zip(items, outcomes)
        ]

    if not all(
        isinstance(i, dict) and isinstance(i.get("request_id"), str) and "label" in i for i in items
    ):
        raise BadRequest('each label is {"request_id": str, "label": value}')
    results = await anyio.to_thread.run_sync(store_all)
    for result in results:
        request.app.state.metrics.labels.labels(result["outcome"]).inc()
    return json_response({"results": results})


async def summary(request: Request) -> Response:
    """Per endpoint and variant: records, labeled rows, and unmatched labels overall."""
    store = _store(request)
    retention = request.app.state.label_retention_s

    def read() -> dict:
        counts = store.counts()
        return {
            "variants": counts,
            "unmatched_labels": store.unmatched_labels(retention),
            "at": time.time(),
        }

    return json_response(await anyio.to_thread.run_sync(read))


async def run_now(request: Request) -> Response:
    """``POST /runs[?reports=true]``: compute drift and quality now (and save Evidently reports)."""
    flag = request.query_params.get("reports", "false")
    if flag not in ("true", "false"):
        raise BadRequest("reports must be true or false")
    runner = request.app.state.runner
    reports = await anyio.to_thread.run_sync(lambda: runner.run_once(save_reports=flag == "true"))
    return json_response({"variants": [r.to_dict() for r in reports]})


async def list_reports(request: Request) -> Response:
    archive = request.app.state.archive
    files = await anyio.to_thread.run_sync(archive.list)
    return json_response({"reports": [f.to_dict() for f in files]})


async def get_report(request: Request) -> Response:
    params = request.path_params
    found = await anyio.to_thread.run_sync(
        request.app.state.archive.find, params["endpoint"], params["variant"], params["name"]
    )
    if found is None:
        raise NotFound(f"no report {params['endpoint']}/{params['variant']}/{params['name']}")
    media = "text/html" if found.format == "html" else "application/json"
    return FileResponse(found.path, media_type=media)


async def metrics(request: Request) -> Response:
    content = await anyio.to_thread.run_sync(exposition)
    return Response(content, media_type=CONTENT_TYPE)


def _rollouts(request: Request):
    rollouts = getattr(request.app.state, "rollouts", None)
    if rollouts is None or not rollouts.policies:
        raise NotFound("no endpoint has a rollout policy in gateway.yaml")
    return rollouts


async def list_rollouts(request: Request) -> Response:
    rollouts = _rollouts(request)
    described = [
        await anyio.to_thread.run_sync(rollouts.describe, name, 0) for name in rollouts.policies
    ]
    return json_response({"rollouts": described})


async def get_rollout(request: Request) -> Response:
    history = request.query_params.get("history", "50")
    if not history.isdigit() or not 0 <= int(history) <= 10_000:
        raise BadRequest("history must be a number of evaluations, 0-10000")
    described = await anyio.to_thread.run_sync(
        _rollouts(request).describe, request.path_params["endpoint"], int(history)
    )
    return json_response(described)


async def rollout_action(request: Request) -> Response:
    """An operator's action (start, pause, resume, approve, promote, rollback), applied now."""
    params = request.path_params
    decision = await anyio.to_thread.run_sync(
        _rollouts(request).act, params["endpoint"], params["action"]
    )
    return json_response(
        {"action": decision.action, "reason": decision.reason, "state": decision.state.to_dict()}
    )


async def _every(interval_s: float, work, what: str) -> None:
    """Run ``work`` in a thread every ``interval_s`` seconds; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(work)
        except Exception:  # the next round tries again
            log.exception("%s failed", what)


@contextlib.asynccontextmanager
async def scheduled_runs(app: Starlette) -> AsyncIterator[None]:
    """While the monitor serves: drift and quality every ``interval_s``, and each endpoint's
    rollout evaluated every its own ``interval_s``."""
    runner = getattr(app.state, "runner", None)
    rollouts = getattr(app.state, "rollouts", None)
    tasks = []
    if runner is not None:
        tasks.append(
            asyncio.create_task(_every(runner.config.interval_s, runner.run_once, "monitor run"))
        )
    if rollouts is not None:
        rollouts.notifier.bind(asyncio.get_running_loop())
        for name, policy in rollouts.policies.items():
            tick = functools.partial(rollouts.tick, name)
            tasks.append(asyncio.create_task(_every(policy.interval_s, tick, f"rollout {name}")))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()


def build_monitor_app() -> Starlette:
    routes = [
        Route("/records", add_records, methods=["POST"]),
        Route("/labels", add_labels, methods=["POST"]),
        Route("/summary", summary, methods=["GET"]),
        Route("/runs", run_now, methods=["POST"]),
        Route("/reports", list_reports, methods=["GET"]),
        Route("/reports/{endpoint}/{variant}/{name}", get_report, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/rollouts", list_rollouts, methods=["GET"]),
        Route("/rollouts/{endpoint}", get_rollout, methods=["GET"]),
        Route("/rollouts/{endpoint}/{action}", rollout_action, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=scheduled_runs)
