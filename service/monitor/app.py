"""The monitor's HTTP surface: records in (from every gateway worker and replica), labels and
rewards in, a summary, analysis runs, reports, rollouts and experiment readouts out. One monitor process owns the store
(service/monitor/bento.py starts it; service/monitor/process.py is what it serves with).

Every route needs ``Authorization: Bearer <monitor token>`` (``/metrics``: the metrics or monitor
token, unless ``access.metrics`` is ``anonymous``). Records with names the routing state does not
know, or malformed ones (names, numbers, or shapes that are not an answer of their model), are
refused one by one and counted; labels are checked against the model that answered before
anything is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Container
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route as HttpRoute

from monitors.records import decode_batch, not_after
from monitors.store import TooManyPending
from service import supervise
from service.codecs import decode_json
from service.config import MAX_RECORD_BATCH_BYTES
from service.errors import BadRequest, NotFound, Overloaded
from service.exposition import CONTENT_TYPE
from service.http.auth import CLIENT_HEADER, require_token
from service.http.body import read_body
from service.http.query import bool_param, int_param, wants_html
from service.http.responses import EXCEPTION_HANDLERS, PAGE_SECURITY_POLICY, json_response
from service.labels import label_problem
from service.logs import Throttled
from service.monitor.priority import background_executor
from service.monitor.reports_page import newest_reports, reports_page
from service.names import endpoint_of, is_name
from service.rewards import request_value, reward_problem

if TYPE_CHECKING:  # the process (Evidently, SHAP) is imported by the worker alone: bento.py
    from service.monitor.process import Monitor

log = logging.getLogger("gateway.monitor")
_refused_records = Throttled(log, every_s=60.0)


def monitor_of(request: Request) -> Monitor:
    """This process's monitor, once the caller has shown the monitor token."""
    monitor: Monitor = request.app.state.monitor
    if monitor.secrets.monitor_token is not None:
        require_token(request, monitor.secrets.monitor_token, off="")
    return monitor


async def add_records(request: Request) -> Response:
    monitor = monitor_of(request)
    try:
        body = await read_body(request, MAX_RECORD_BATCH_BYTES)
        records = not_after(decode_batch(body), time.time())
    except ValueError as error:
        raise BadRequest(str(error)) from None

    if records:
        monitor.share.records_arrived(min(r.at for r in records), time.time())

    def store() -> tuple[int, int]:
        kept = [r for r in records if monitor.accepts(r)]
        return monitor.store.add_records(kept), len(records) - len(kept)

    stored, refused = await anyio.to_thread.run_sync(store)
    if refused:
        monitor.metrics.records_refused.inc(refused)
        _refused_records.warning(
            "refused %d records: unknown names, or not an answer of their model", refused
        )
    return json_response({"stored": stored, "refused": refused})


def _feedback_items(data: object, kind: str, fields: tuple[str, ...]) -> list[dict]:
    """The items of ``{kind: [{"request_id": str, <fields>...}, ...]}`` (400 otherwise)."""
    items = data.get(kind) if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("request_id"), str) and set(fields) <= i.keys()
        for i in items
    ):
        shape = ", ".join(f'"{name}": value' for name in fields)
        raise BadRequest(f'the body must be {{"{kind}": [{{"request_id": str, {shape}}}, ...]}}')
    return items


def _endpoint_of_item(monitor: Monitor, request_id: str, answered: Container[str]) -> str:
    """The endpoint an item's request id names. 400 unless it is of the gateway's form, and, when
    it is not signed as the id of a recorded answer, unless its record is here: only those may
    wait for their record (service/names.py ``RequestIds``)."""
    endpoint = endpoint_of(request_id)
    if endpoint is None:
        raise BadRequest(f"{request_id!r} is not a request id the gateway gives")
    if request_id not in answered and not monitor.request_ids.recorded(request_id):
        raise BadRequest(
            f"{request_id}: no answer with this id is recorded, and no gateway gave it to an "
            "answer it records (a refusal or an explanation is not; nor is a made-up id); "
            "nothing was stored"
        )
    return endpoint


async def add_labels(request: Request) -> Response:
    """Check every label against the model that answered (when its record is here), then store
    them all durably in one transaction, or none; the answer gives each one's outcome."""
    monitor = monitor_of(request)
    monitor.share.hurry()  # a caller waits for this answer
    body = decode_json(await read_body(request, MAX_RECORD_BATCH_BYTES))
    items = _feedback_items(body, "labels", ("label",))
    store = monitor.store

    def check_and_store() -> list[dict]:
        answered = store.answered(i["request_id"] for i in items)
        for item in items:
            request_id = item["request_id"]
            _endpoint_of_item(monitor, request_id, answered)
            if request_id in answered:
                tag, rows = answered[request_id]
                card = monitor.card(tag)
                problem = label_problem([card] if card else [], item["label"], rows)
                if card is not None and problem is not None:
                    raise BadRequest(f"{request_id}: {problem}; nothing was stored")
        outcomes = store.add_labels(
            ((i["request_id"], i["label"]) for i in items),
            max_pending=monitor.config.monitor.max_pending_labels,
        )
        return [
            {"request_id": item["request_id"], "outcome": outcome.value}
            for item, outcome in zip(items, outcomes)
        ]

    try:
        results = await anyio.to_thread.run_sync(check_and_store)
    except TooManyPending as error:
        monitor.metrics.labels.labels("refused").inc(len(items))
        raise Overloaded(f"{error}: nothing was stored", retry_after_s=60) from None
    except BadRequest:
        monitor.metrics.labels.labels("invalid").inc(len(items))
        raise
    for result in results:
        monitor.metrics.labels.labels(result["outcome"]).inc()
    return json_response({"results": results})


async def add_rewards(request: Request) -> Response:
    """Check every reward against its endpoint's experiment (and the rows its request had, when
    its record is here), then store them all durably in one transaction, or none."""
    monitor = monitor_of(request)
    monitor.share.hurry()
    body = decode_json(await read_body(request, MAX_RECORD_BATCH_BYTES))
    items = _feedback_items(body, "rewards", ("metric", "value"))
    store, endpoints = monitor.store, monitor.config.endpoints

    def check_and_store() -> list[dict]:
        answered = store.answered(i["request_id"] for i in items)
        rewards = []
        for item in items:
            request_id, metric, value = item["request_id"], item["metric"], item["value"]
            endpoint = endpoints.get(_endpoint_of_item(monitor, request_id, answered))
            experiment = endpoint.experiment if endpoint else None
            rows = answered[request_id][1] if request_id in answered else None
            problem = reward_problem(experiment, metric, value, rows)
            if problem is not None:
                raise BadRequest(f"{request_id} {metric}: {problem}; nothing was stored")
            rewards.append((request_id, metric, request_value(value), experiment.join_window_s))
        outcomes = store.add_rewards(rewards, max_pending=monitor.config.monitor.max_pending_labels)
        return [
            {"request_id": item["request_id"], "metric": item["metric"], "outcome": outcome.value}
            for item, outcome in zip(items, outcomes)
        ]

    counted = monitor.metrics.rewards
    try:
        results = await anyio.to_thread.run_sync(check_and_store)
    except TooManyPending as error:
        counted.labels("refused").inc(len(items))
        raise Overloaded(f"{error}: nothing was stored", retry_after_s=60) from None
    except BadRequest:
        counted.labels("invalid").inc(len(items))
        raise
    for result in results:
        counted.labels(result["outcome"]).inc()
    return json_response({"results": results})


async def summary(request: Request) -> Response:
    """Per endpoint and variant: records, labeled rows, and labels waiting for a prediction."""
    store = monitor_of(request).store

    def read() -> dict:
        return {
            "variants": store.counts(),
            "pending_labels": store.pending_labels(),
            "at": time.time(),
        }

    return json_response(await anyio.to_thread.run_sync(read))


async def run_now(request: Request) -> Response:
    """``POST /runs[?reports=true]``: compute drift and quality now (and save Evidently reports),
    and read out the running experiments."""
    monitor = monitor_of(request)
    save = bool_param(request, "reports")

    def run() -> list:
        reports = monitor.runner.run_once(save_reports=save, fresh=True)
        monitor.experiments.export()
        return reports

    reports = await anyio.to_thread.run_sync(run)
    return json_response({"variants": [r.to_dict() for r in reports]})


async def list_reports(request: Request) -> Response:
    """``GET /reports``: every saved report (JSON), or for a browser the reports page."""
    monitor = monitor_of(request)
    if wants_html(request):
        page = await anyio.to_thread.run_sync(_reports_page, monitor)
        headers = {"content-security-policy": PAGE_SECURITY_POLICY}
        return HTMLResponse(page, headers=headers)
    files = await anyio.to_thread.run_sync(monitor.archive.list)
    return json_response({"reports": [f.to_dict() for f in files]})


def _reports_page(monitor: Monitor) -> str:
    rollouts = monitor.rollouts
    described = {name: rollouts.describe(name, 0) for name in rollouts.policies}
    endpoints = sorted(monitor.tables())
    return reports_page(newest_reports(monitor.archive), described, endpoints)


async def get_report(request: Request) -> Response:
    archive = monitor_of(request).archive
    params = request.path_params
    endpoint, variant, name = params["endpoint"], params["variant"], params["name"]
    found = None
    if is_name(endpoint) and is_name(variant):
        found = await anyio.to_thread.run_sync(archive.find, endpoint, variant, name)
    if found is None:
        raise NotFound(f"no report {endpoint}/{variant}/{name}")
    media = "text/html" if found.format == "html" else "application/json"
    return FileResponse(found.path, media_type=media)


async def metrics(request: Request) -> Response:
    monitor: Monitor = request.app.state.monitor
    secrets = monitor.secrets
    if monitor.config.access.metrics != "anonymous" and secrets.monitor_token is not None:
        require_token(
            request,
            secrets.metrics_token,
            secrets.monitor_token,
            off="/metrics needs GATEWAY_METRICS_TOKEN (or access.metrics: anonymous)",
        )
    return Response(await monitor.metrics.recent_exposition(), media_type=CONTENT_TYPE)


def _rollouts(request: Request):
    rollouts = monitor_of(request).rollouts
    if not rollouts.policies:
        raise NotFound("no endpoint has a rollout policy in gateway.yaml")
    return rollouts


async def list_rollouts(request: Request) -> Response:
    rollouts = _rollouts(request)
    described = [
        await anyio.to_thread.run_sync(rollouts.describe, name, 0) for name in rollouts.policies
    ]
    return json_response({"rollouts": described})


async def get_rollout(request: Request) -> Response:
    rollouts = _rollouts(request)
    history = int_param(request, "history", 50, 0, 10_000)
    described = await anyio.to_thread.run_sync(
        rollouts.describe, request.path_params["endpoint"], history
    )
    return json_response(described)


async def rollout_action(request: Request) -> Response:
    """An operator's action (start, pause, resume, approve, promote, rollback), applied now;
    it comes through a gateway's token-checked ``/admin/rollouts/...``."""
    rollouts = _rollouts(request)
    endpoint, action = request.path_params["endpoint"], request.path_params["action"]
    log.info(
        "rollout %s of %s asked by %s", action, endpoint, request.headers.get(CLIENT_HEADER, "?")
    )
    decision = await anyio.to_thread.run_sync(rollouts.act, endpoint, action)
    return json_response(
        {"action": decision.action, "reason": decision.reason, "state": decision.state.to_dict()}
    )


def _experiments(request: Request):
    experiments = monitor_of(request).experiments
    if not experiments.experiments:
        raise NotFound("no endpoint has an experiment in gateway.yaml")
    return experiments


async def list_experiments(request: Request) -> Response:
    experiments = _experiments(request)
    return json_response({"experiments": await anyio.to_thread.run_sync(experiments.list)})


async def get_experiment(request: Request) -> Response:
    """The readout: per arm and metric the means, per treatment the lifts with their intervals
    and corrected p-values, the sample-ratio test, power, and the verdict with its reason."""
    experiments = _experiments(request)
    endpoint = request.path_params["endpoint"]
    return json_response(await anyio.to_thread.run_sync(experiments.describe, endpoint))


BUSY_SHARE = 0.25
"""The most of its time a periodic job of the leader may spend running: after a run of d seconds
the next waits at least ``d / BUSY_SHARE - d``. A readout or a rollout's look reads its whole
window, which grows for as long as the experiment runs or the rollout waits (about 3.7 s per
million requests, BENCHMARKS.md): at its interval it would come to take a core, where it is now
read less often. Reading less often is safe: every verdict is always valid, at any looks."""


async def _every(
    interval_s: float,
    work: Callable[[], object],
    what: str,
    when: Callable[[], bool] = lambda: True,
    executor: Executor | None = None,
    busy_share: float | None = BUSY_SHARE,
) -> None:
    """Run ``work`` in a thread (of ``executor`` when given) every ``interval_s`` seconds while
    ``when()``, and, with ``busy_share``, less often once its runs take longer than that share
    of the time; a failure is logged, not fatal."""
    failures = Throttled(log, every_s=300.0)
    took_s = 0.0

    def run() -> None:
        """``work``, timed where it runs (not while it waits for a thread of ``executor``)."""
        nonlocal took_s
        started = time.monotonic()
        try:
            work()
        finally:
            took_s = time.monotonic() - started

    while True:
        spaced_s = 0.0 if busy_share is None else took_s / busy_share - took_s
        await asyncio.sleep(max(interval_s, spaced_s))
        if not when():
            continue
        try:
            if executor is None:
                await anyio.to_thread.run_sync(run)
            else:
                await asyncio.get_running_loop().run_in_executor(executor, run)
        except Exception:  # the next round tries again
            failures.warning("%s failed", what, exc_info=True)


@contextlib.asynccontextmanager
async def background(app: Starlette) -> AsyncIterator[None]:
    """While the monitor serves (each task supervised): the leader lease renewed (or sought),
    and while this monitor leads: drift and quality every ``interval_s``, each endpoint's rollout
    every its own ``interval_s``, webhook deliveries, and pruning. Analysis runs (drift, quality,
    attribution, Evidently reports) and pruning, the costly and least urgent work, share one
    thread at a lower CPU priority (service/monitor/priority.py); lease renewals, rollout ticks and
    experiment readouts, which are due on time, do not wait behind them."""
    monitor: Monitor | None = getattr(app.state, "monitor", None)
    tasks = []
    analysis = background_executor()
    if monitor is not None:
        restarted = monitor.metrics.task_restarted
        runner, rollouts, leadership = monitor.runner, monitor.rollouts, monitor.leadership

        def leading() -> bool:
            return leadership.leading

        def led(
            interval_s: float,
            work: Callable[[], object],
            what: str,
            executor: Executor | None = None,
        ) -> Callable:
            """A job that runs only while this monitor leads."""
            return functools.partial(_every, interval_s, work, what, leading, executor)

        jobs = {
            "leader lease": functools.partial(  # on time, whatever a renewal takes
                _every, leadership.renew_every_s, leadership.renew, "leader lease", busy_share=None
            ),
            "monitor runs": led(runner.config.interval_s, runner.run_once, "monitor run", analysis),
            "webhook deliveries": functools.partial(monitor.notifier.deliver_forever, leading),
            "pruning": led(
                monitor.config.retention.prune_interval_s, monitor.prune, "pruning", analysis
            ),
            "experiments": led(
                runner.config.interval_s, monitor.experiments.export, "experiment readout"
            ),
            "rollout reasons": led(
                runner.config.interval_s, rollouts.compare_reasons, "rollout reasons", analysis
            ),
        }
        for name, policy in rollouts.policies.items():
            tick = functools.partial(rollouts.tick, name)
            jobs[f"rollout {name}"] = led(policy.interval_s, tick, f"rollout {name}")
        await anyio.to_thread.run_sync(leadership.renew)
        monitor.share.start()
        tasks = [supervise.start(name, job, restarted) for name, job in jobs.items()]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        analysis.shutdown(wait=False, cancel_futures=True)
        if monitor is not None:
            await anyio.to_thread.run_sync(monitor.leadership.resign)


def build_monitor_app() -> Starlette:
    routes = [
        HttpRoute("/records", add_records, methods=["POST"]),
        HttpRoute("/labels", add_labels, methods=["POST"]),
        HttpRoute("/rewards", add_rewards, methods=["POST"]),
        HttpRoute("/summary", summary, methods=["GET"]),
        HttpRoute("/runs", run_now, methods=["POST"]),
        HttpRoute("/reports", list_reports, methods=["GET"]),
        HttpRoute("/reports/{endpoint}/{variant}/{name}", get_report, methods=["GET"]),
        HttpRoute("/metrics", metrics, methods=["GET"]),
        HttpRoute("/rollouts", list_rollouts, methods=["GET"]),
        HttpRoute("/rollouts/{endpoint}", get_rollout, methods=["GET"]),
        HttpRoute("/rollouts/{endpoint}/{action}", rollout_action, methods=["POST"]),
        HttpRoute("/experiments", list_experiments, methods=["GET"]),
        HttpRoute("/experiments/{endpoint}", get_experiment, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=background)
