"""Requests at every route of a gateway, each a valid one with one part changed at random (a value,
a field, a name in the path, a header, the token), as an attacker probing it would send: whatever
comes, the answer is never a 5xx of the gateway's own. 503, the monitor out of reach, is the one
5xx a caller may get, and only from the routes that need the monitor."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter

import pytest

from service.launch import free_port
from tests.helpers import (
    ADMIN_AUTH,
    PROBE_NAMES,
    ROW,
    changed_at_random,
    in_process_gateway,
    write_config,
)

NEEDS_THE_MONITOR = ("/feedback", "/reports", "/admin/rollouts", "/admin/experiments")
QUERIES = ("", "?target=benign", "?target=x", "?limit=-1", "?limit=abc", "?limit=99999999999")


def _routes(request_id: str) -> list[tuple[str, str, object]]:
    """(method, path, a valid body) for every route; ``{e}`` an endpoint, ``{v}`` a variant or a
    version or an action."""
    tensor = {"name": "X", "datatype": "FP32", "shape": [1, 30], "data": ROW}
    return [
        ("POST", "/predict/{e}", {"instances": [ROW]}),
        ("POST", "/explain/{e}", {"instances": [ROW]}),
        ("GET", "/endpoints", None),
        ("POST", "/feedback", {"labels": [{"request_id": request_id, "label": "benign"}]}),
        (
            "POST",
            "/feedback",
            {"rewards": [{"request_id": request_id, "metric": "converted", "value": 1}]},
        ),
        ("GET", "/reports/{e}/{v}/drift", None),
        ("GET", "/metrics", None),
        ("GET", "/v2/models/{e}", None),
        ("POST", "/v2/models/{e}/infer", {"id": "a", "inputs": [tensor], "parameters": {}}),
        ("POST", "/v2/models/{e}/versions/{v}/infer", {"inputs": [tensor]}),
        ("POST", "/v2/repository/index", {"ready": True}),
        ("GET", "/admin/routing", None),
        ("PUT", "/admin/endpoints/{e}/weights", {"weights": {"stable": 60, "candidate": 40}}),
        (
            "POST",
            "/admin/endpoints/{e}/variants",
            {"name": "extra", "model": "cancer:v2", "role": "candidate", "weight": 0},
        ),
        ("DELETE", "/admin/endpoints/{e}/variants/extra", None),
        ("POST", "/admin/reload", None),
        ("GET", "/admin/audit", None),
        ("POST", "/admin/rollouts/{e}/{v}", None),
        ("POST", "/admin/experiments/{e}/{v}", None),
    ]


def _headers(rng: random.Random) -> dict[str, bytes]:
    headers = dict(ADMIN_AUTH) if rng.random() < 0.85 else {}
    optional = {
        "authorization": ("Bearer x", "Basic abc", "Bearer", "é"),
        "x-gateway-variant": PROBE_NAMES,
        "x-user-id": (*PROBE_NAMES, "u" * 300, "é"),
        "x-request-id": ("ok-1", "bad id", "x" * 200),
        "content-type": ("application/json", "text/plain", "application/octet-stream"),
        "content-encoding": ("gzip", "br", "identity"),
        "inference-header-content-length": ("0", "10", "-5", "abc", "99999999"),
    }
    for name, values in optional.items():
        if rng.random() < 0.08:
            headers[name] = rng.choice(values)
    return {name: value.encode() for name, value in headers.items()}  # bytes: any octet goes


@pytest.fixture
def config(demo_models, tmp_path, monkeypatch):
    """Two endpoints, one with an experiment; a monitor nobody answers at."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_AUTH["Authorization"].split()[1])
    cancer = {
        "routing": {"key": {"header": "x-user-id"}},
        "variants": [
            {"name": "stable", "model": "cancer:v1", "weight": 90},
            {"name": "candidate", "model": "cancer:v2", "weight": 10, "role": "candidate"},
        ],
        "experiment": {
            "arms": ["stable", "candidate"],
            "rewards": {"converted": {"kind": "binary"}},
            "primary": "converted",
        },
    }
    diabetes = {"variants": [{"name": "stable", "model": "diabetes:v1"}]}
    return write_config(
        tmp_path / "gateway.yaml",
        data_dir=str(tmp_path / "data"),
        endpoints={"cancer": cancer, "diabetes": diabetes},
        monitor={"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.2},
    )


async def test_changed_requests_at_every_route_never_answer_a_5xx_of_the_gateways(config):
    rng = random.Random(1)
    statuses: Counter = Counter()
    wrong = []
    async with in_process_gateway(config) as (_, client):
        served = await client.post("/predict/cancer", json={"instances": [ROW]})
        routes = _routes(served.json()["request_id"])
        for _ in range(5000):
            method, template, body = rng.choice(routes)
            names = {"e": "cancer", "v": rng.choice(("stable", "v1", "pause", "start", "stop"))}
            if rng.random() < 0.3:
                names[rng.choice("ev")] = rng.choice(PROBE_NAMES)
            path = template.format(**names) + rng.choice(QUERIES)
            if body is not None and rng.random() < 0.8:
                body = changed_at_random(rng, copy.deepcopy(body))
            content = None if body is None else json.dumps(body).encode()
            if content is not None and rng.random() < 0.05:
                content = content[: rng.randrange(len(content))]  # cut short
            answer = await client.request(method, path, content=content, headers=_headers(rng))
            statuses[answer.status_code] += 1
            allowed = answer.status_code == 503 and template.startswith(NEEDS_THE_MONITOR)
            if answer.status_code >= 500 and not allowed:
                wrong.append((method, path, content and content[:200], answer.text))
        after = await client.post("/predict/cancer", json={"instances": [ROW]})
    assert not wrong, wrong[:5]
    assert after.status_code == 200, "still serves afterwards"
    assert statuses[200] > 500 and statuses[400] > 500, statuses  # both served and refused
