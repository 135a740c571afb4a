"""onnxruntime sessions: picking the device that really works, loading, warming up, running.

``auto`` uses CUDA only when a probe session actually gets the CUDA provider; otherwise the CPU,
without onnxruntime's loud provider-library errors (the probe runs with its logging silenced, and is
skipped outright when there is no NVIDIA driver to load).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.errors import ConfigError
from service.tensors import OIP_TO_NUMPY

if TYPE_CHECKING:
    from service.model_card import ModelCard

log = logging.getLogger("gateway.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
WARNING_SEVERITY = 2
SILENT_SEVERITY = 4


def _nvidia_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_works(probe_model: Path) -> bool:
    """Whether a session on ``probe_model`` really runs on CUDA (not just lists the provider)."""
    if CUDA not in ort.get_available_providers() or not _nvidia_driver_present():
        return False
    ort.set_default_logger_severity(SILENT_SEVERITY)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = SILENT_SEVERITY
        session = ort.InferenceSession(str(probe_model), options, providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:  # any failure to bring CUDA up means: not usable
        return False
    finally:
        ort.set_default_logger_severity(WARNING_SEVERITY)


def resolve_providers(device: str, probe_model: Path) -> list[str]:
    """The provider list for ``device`` (auto, cpu or cuda); ``cuda`` without a GPU is an error."""
    if device == "cpu":
        return [CPU]
    works = cuda_works(probe_model)
    if device == "cuda" and not works:
        raise ConfigError(
            "device: cuda was asked for but CUDA is not usable here (no NVIDIA driver, no GPU, or "
            "onnxruntime-gpu cannot load its CUDA libraries); use device: auto or cpu"
        )
    return [CUDA, CPU] if works else [CPU]


SPINNING = "session.intra_op.allow_spinning"
"""onnxruntime's session setting for its intra-op pool threads' spinning."""


class ModelSession:
    """One onnxruntime session for one model version. ``run`` is thread-safe and releases the GIL."""

    def __init__(
        self,
        model_path: Path,
        card: ModelCard,
        providers: list[str],
        intra_op_threads: int = 0,
        intra_op_spinning: bool = False,
    ) -> None:
        """``intra_op_spinning``: whether onnxruntime's pool threads spin after each run, waiting
        for the next piece of work, rather than sleep. Spinning saves a thread wake-up (a few
        microseconds) per parallel section, and burns a core per pool thread whenever the model
        is not running: beside a busy event loop and its callers, the demo's MLP served 3,600-4,100
        answers a second with it and 9,100-9,400 without (BENCHMARKS.md)."""
        options = ort.SessionOptions()
        options.log_severity_level = WARNING_SEVERITY
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry(SPINNING, "1" if intra_op_spinning else "0")
        self.card = card
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output by name."""
        values = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, values))

    def zeros(self, rows: int) -> dict[str, np.ndarray]:
        """Inputs of ``rows`` rows of zeros, the shapes and types the model takes."""
        feeds = {}
        for spec in self.card.inputs:
            shape = [rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)]
            dtype = OIP_TO_NUMPY[spec.datatype]
            feeds[spec.name] = np.zeros(shape, dtype=np.str_ if dtype.kind == "O" else dtype)
        return feeds

    def warm_up(self, rows: int) -> None:
        """Run once on zeros so the first real request does not pay for lazy initialisation."""
        self.run(self.zeros(rows))
