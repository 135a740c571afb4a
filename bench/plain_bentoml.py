"""Baseline for the benchmark: a plain BentoML service wrapping one ONNX file, nothing else.

It does the same work per request as the gateway's plain API (JSON rows in, label and probabilities
out) through an ordinary ``@bentoml.api`` method, with access logging off as the gateway has it.
``BENCH_MODEL`` names the ONNX file, ``BENCH_WORKERS`` the number of worker processes. With ``BENCH_ADAPTIVE=1`` it uses BentoML's adaptive batching
instead (``batchable=True``), the alternative to the gateway's in-process batcher.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

ADAPTIVE = os.environ.get("BENCH_ADAPTIVE") == "1"


@bentoml.service(
    name="plain",
    workers=int(os.environ.get("BENCH_WORKERS", "1")),
    logging={"access": {"enabled": False}},
)
class Plain:
    def __init__(self) -> None:
        self.session = ort.InferenceSession(
            os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    if ADAPTIVE:

        @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
        def predict(self, instances: np.ndarray) -> np.ndarray:
            outputs = self.session.run(None, {self.input: instances.astype(np.float32)})
            return outputs[-1]

    else:

        @bentoml.api
        def predict(self, instances: list[list[float]]) -> dict:
            rows = np.asarray(instances, dtype=np.float32)
            outputs = self.session.run(None, {self.input: rows})
            return {"predictions": [o.tolist() for o in outputs]}
