"""Requests at every route of the monitor, with its token (what a gateway sends, or one that went
wrong), each a valid one with one part changed at random: none answers a 5xx but a 503."""

from __future__ import annotations

import copy
import json
import random
import time
from collections import Counter

import httpx

from service.monitor.app import build_monitor_app
from service.names import RequestIds
from service.secrets import Secrets
from tests.helpers import (
    MONITOR_AUTH,
    MONITOR_TOKEN,
    PROBE_NAMES,
    ROW,
    changed_at_random,
    monitor_in_process,
)

CANCER = {
    "variants": [
        {"name": "stable", "model": "cancer:v1", "weight": 90},
        {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
    ],
    "experiment": {
        "arms": ["stable", "candidate"],
        "rewards": {"converted": {"kind": "binary"}, "revenue": {"kind": "continuous"}},
        "primary": "converted",
    },
}
CANARY = {
    "variants": [
        {"name": "stable", "model": "cancer:v1"},
        {"name": "candidate", "model": "cancer:v2", "role": "candidate", "weight": 0},
    ],
    "rollout": {"candidate": "candidate", "steps": [{"weight": 10}]},
}


def _routes(request_id: str) -> list[tuple[str, str, object]]:
    record = {
        "request_id": request_id,
        "at": time.time(),
        "endpoint": "cancer",
        "variant": "stable",
        "model": "cancer:v1",
        "predictions": ["benign"],
        "latency_s": 0.01,
        "inputs": [ROW],
    }
    return [
        ("POST", "/records", {"records": [record]}),
        ("POST", "/labels", {"labels": [{"request_id": request_id, "label": "benign"}]}),
        (
            "POST",
            "/rewards",
            {"rewards": [{"request_id": request_id, "metric": "converted", "value": 1}]},
        ),
        ("GET", "/summary", None),
        ("GET", "/reports/{e}/{v}/drift", None),
        ("GET", "/rollouts/{e}", None),
        ("POST", "/rollouts/{e}/{v}", None),
        ("GET", "/experiments/{e}", None),
    ]


async def test_changed_requests_at_every_monitor_route_never_answer_a_5xx(
    demo_models, tmp_path, monkeypatch
):
    endpoints = {"cancer": CANCER, "canary": CANARY}
    monitor = monitor_in_process(tmp_path, monkeypatch, endpoints)
    monitor.secrets = Secrets(monitor_token=MONITOR_TOKEN)
    app = build_monitor_app()  # its routes alone: no leader's background work
    app.state.monitor = monitor
    routes = _routes(RequestIds(MONITOR_TOKEN).new("cancer"))
    rng = random.Random(2)
    statuses: Counter = Counter()
    wrong = []
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
        for _ in range(3000):
            method, template, body = rng.choice(routes)
            names = {"e": rng.choice(("cancer", "canary")), "v": rng.choice(("stable", "pause"))}
            if rng.random() < 0.3:
                names[rng.choice("ev")] = rng.choice(PROBE_NAMES)
            path = template.format(**names)
            if body is not None and rng.random() < 0.8:
                body = changed_at_random(rng, copy.deepcopy(body))
            content = None if body is None else json.dumps(body).encode()
            answer = await client.request(method, path, content=content, headers=MONITOR_AUTH)
            statuses[answer.status_code] += 1
            if answer.status_code >= 500 and answer.status_code != 503:
                wrong.append((method, path, content and content[:200], answer.text))
    assert not wrong, wrong[:5]
    assert statuses[200] > 500 and statuses[400] > 300, statuses
