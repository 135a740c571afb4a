"""Locust users that behave like the gateway's real clients.

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:3000

Each user has a sticky id (``x-user-id``) for its whole life, so routing keeps it on one variant;
four calls in five use the plain JSON API and one the Open Inference Protocol; between calls it
thinks (50-500 ms); the ground truth of its answers arrives later (1-5 s), in batches, through
``POST /feedback``, as a labelling pipeline would send it. Rows come from scikit-learn's bundled
breast-cancer data (the demo's ``cancer`` endpoint; ``GATEWAY_ENDPOINT`` to change it).
``GATEWAY_SHAPE=step`` or ``drift`` adds a load shape (loadtests/shapes.py).

``GATEWAY_GRPC=127.0.0.1:3002`` (the gateway's ``server.grpc_port``) adds users that call the
Open Inference Protocol over gRPC with tritonclient.grpc (one in four users), timed and reported
the way Locust's documentation shows for custom clients (``events.request``), under the name
``grpc ModelInfer``.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, between, events, task  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

import loadtests.drift as drift  # noqa: E402

ENDPOINT = os.environ.get("GATEWAY_ENDPOINT", "cancer")
_DATA = load_breast_cancer()
ROWS = _DATA.data.tolist()
TRUTH = [str(_DATA.target_names[t]) for t in _DATA.target]
DRIFT_COLUMNS = {list(_DATA.feature_names).index(n): f for n, f in drift.DRIFTED.items()}

if os.environ.get("GATEWAY_SHAPE") == "step":
    from loadtests.shapes import StepLoadShape  # noqa: F401  (locust finds it here)
elif os.environ.get("GATEWAY_SHAPE") == "drift":
    from loadtests.shapes import DriftShape  # noqa: F401


def sample() -> tuple[list[float], str]:
    """A row and its true label; scaled in two features while the inputs drift."""
    index = random.randrange(len(ROWS))
    row = list(ROWS[index])
    if drift.drifting:
        for column, factor in DRIFT_COLUMNS.items():
            row[column] *= factor
    return row, TRUTH[index]


class GatewayClient(FastHttpUser):
    weight = 3
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.user_id = f"user-{uuid.uuid4().hex[:12]}"
        self.pending: list[tuple[float, str, str]] = []  # (due, request id, label)

    def _answered(self, request_id: str | None, label: str) -> None:
        if request_id:
            self.pending.append((time.monotonic() + random.uniform(1, 5), request_id, label))

    def _predict(self, path: str, body: dict, name: str, label: str) -> None:
        with self.client.post(
            path, json=body, headers={"x-user-id": self.user_id}, name=name, catch_response=True
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
                return
            self._answered(answer.headers.get("x-gateway-request-id"), label)

    @task(4)
    def predict_plain(self) -> None:
        row, label = sample()
        self._predict(f"/predict/{ENDPOINT}", {"instances": [row]}, "/predict", label)

    @task(1)
    def predict_oip(self) -> None:
        row, label = sample()
        body = {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, len(row)], "data": row}],
            "parameters": {},
        }
        self._predict(f"/v2/models/{ENDPOINT}/infer", body, "/v2/models/infer", label)

    @task(1)
    def send_due_labels(self) -> None:
        """The labels whose time has come, in one call (like a labelling pipeline's batch)."""
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        if not due:
            return
        self.pending = [p for p in self.pending if p[0] > now]
        labels = [{"request_id": request_id, "label": label} for _, request_id, label in due]
        with self.client.post(
            "/feedback", json={"labels": labels}, name="/feedback", catch_response=True
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")


if os.environ.get("GATEWAY_GRPC"):
    import grpc.experimental.gevent as grpc_gevent  # noqa: E402
    import numpy as np  # noqa: E402
    import tritonclient.grpc as triton_grpc  # noqa: E402
    from locust import User  # noqa: E402

    grpc_gevent.init_gevent()  # grpc's own threads made to cooperate with Locust's greenlets
    CLIENTS: list = []

    @events.quitting.add_listener
    def _close_grpc_clients(environment, **kwargs) -> None:
        """Close every channel from the main greenlet before Locust exits: a channel left open,
        or closed from a user's greenlet as it is killed, can hang the process at exit."""
        for client in CLIENTS:
            client.close()

    class GrpcGatewayClient(User):
        """A client of the gateway's gRPC port: sticky id in the metadata, one row per call."""

        weight = 1
        wait_time = between(0.05, 0.5)

        def on_start(self) -> None:
            self.user_id = f"user-{uuid.uuid4().hex[:12]}"
            self.client = triton_grpc.InferenceServerClient(os.environ["GATEWAY_GRPC"])
            CLIENTS.append(self.client)

        @task
        def predict_grpc(self) -> None:
            row, _ = sample()
            tensor = triton_grpc.InferInput("X", [1, len(row)], "FP32")
            tensor.set_data_from_numpy(np.asarray([row], dtype=np.float32))
            started, failure, size = time.perf_counter(), None, 0
            try:
                result = self.client.infer(ENDPOINT, [tensor], headers={"x-user-id": self.user_id})
                size = result.get_response().ByteSize()
            except Exception as error:  # reported to Locust as the call's failure
                failure = error
            self.environment.events.request.fire(
                request_type="grpc",
                name="grpc ModelInfer",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=size,
                exception=failure,
                context={},
            )
