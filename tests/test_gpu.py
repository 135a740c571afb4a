"""On a machine with an NVIDIA GPU: the CUDA provider really runs the models, and agrees with the CPU.

Marked ``gpu``; skipped, saying why, only where no GPU is present (no NVIDIA driver to load). Where
a driver is present, CUDA not coming up is a failure, not a skip.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pandas as pd
import pytest

from service import registry
from service.demo.wide_model import build_wide_model
from service.model_card import MODEL_FILE
from service.runtime import CPU, CUDA, ModelSession, resolve_providers


def _gpu_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu_present(), reason="no NVIDIA GPU here (libcuda.so.1 not found)"),
]


def _both(tag: str) -> tuple[ModelSession, ModelSession]:
    path, card = registry.model_dir(tag) / MODEL_FILE, registry.load_card(tag)
    providers = resolve_providers("cuda", path)  # a start-up error if CUDA does not come up
    return ModelSession(path, card, providers), ModelSession(path, card, [CPU])


@pytest.mark.parametrize("tag", ["cancer:v1", "diabetes:v1"])
def test_demo_models_run_on_cuda_and_agree_with_the_cpu(demo_models, tag):
    cuda, cpu = _both(tag)
    assert cuda.provider == CUDA
    rows = pd.read_csv(demo_models[tag].test_path).drop(columns=["label"]).to_numpy(np.float32)
    on_gpu, on_cpu = cuda.run({"X": rows}), cpu.run({"X": rows})
    for name, value in on_cpu.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(on_gpu[name], value, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(on_gpu[name], value)


def test_a_wide_model_runs_on_cuda_and_agrees_with_the_cpu(demo_models, tmp_path):
    model = build_wide_model(tmp_path / "wide.onnx", width=1024, layers=3)
    features = np.random.default_rng(0).standard_normal((64, 30)).astype(np.float32)
    reference = tmp_path / "reference.csv"
    pd.DataFrame(features, columns=[f"f{i}" for i in range(30)]).assign(label=0.0).to_csv(
        reference, index=False
    )
    registry.add_model(model, "widegpu", reference, version="v1")
    cuda, cpu = _both("widegpu:v1")
    assert cuda.provider == CUDA
    np.testing.assert_allclose(
        cuda.run({"X": features})["variable"],
        cpu.run({"X": features})["variable"],
        rtol=1e-3,
        atol=1e-4,  # TF32 and fused kernels on the GPU round differently
    )
