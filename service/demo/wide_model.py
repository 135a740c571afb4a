"""A wide MLP with random weights, exported to ONNX: a model where inference is a real cost.

Its layers are ``width x width`` matmuls, so one row is a memory-bound matrix-vector product and a
batch of rows shares each weight read: the model the batching benchmark and the overload test use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_wide_model(path: Path, features: int = 30, width: int = 2048, layers: int = 4) -> Path:
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((features, width)) / np.sqrt(features)).astype(np.float32)]
    weights += [
        (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        for _ in range(layers)
    ]
    initializers, nodes, current = [], [], "X"
    for index, weight in enumerate(weights):
        initializers.append(numpy_helper.from_array(weight, f"W{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [f"H{index}"]))
        nodes.append(helper.make_node("Tanh", [f"H{index}"], [f"A{index}"]))
        current = f"A{index}"
    nodes.append(helper.make_node("ReduceMean", [current], ["variable"], keepdims=1, axes=[1]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
