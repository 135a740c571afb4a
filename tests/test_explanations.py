"""What both explaining processes compute with (service/explanations.py), called directly; that
the attributions add up to the answers is tests/test_explain.py's, through the gateway."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from service import registry
from service.explanations import SESSION_THREADS, _model, attributions


def test_an_explained_model_runs_on_one_onnxruntime_thread(demo_models) -> None:
    """A pool's threads spin between the many small masked batches: twice the CPU (the docs of
    ``SESSION_THREADS``), on a machine that serves too."""
    session, _ = _model(registry.load_card("cancer:v2"), 50)
    assert session.session.get_session_options().intra_op_num_threads == SESSION_THREADS == 1


def test_shap_explains_without_compiling_its_loops(demo_models) -> None:
    """numba's compile of SHAP's masking loops is 7.5 s of CPU in each process that explains
    (the docs of ``_shap``): they run as plain Python."""
    card = registry.load_card("cancer:v1")
    rows = np.full((1, len(card.feature_names)), 0.5, dtype=np.float32)
    (explanation,) = attributions(card, rows, [str(card.class_labels[0])], 20, 0)
    assert len(explanation.values) == len(card.feature_names)
    from shap.maskers import _tabular
    from shap.utils import _masked_model

    for loop in (_tabular._delta_masking, _masked_model._build_fixed_single_output):
        assert not hasattr(loop, "py_func"), f"{loop} is a numba dispatcher: compiled at first use"


def test_an_operator_who_sets_numba_disable_jit_keeps_the_compiled_loops() -> None:
    """``NUMBA_DISABLE_JIT=0`` (numba's own switch) is left to the operator: bulk explanations
    are cheaper per row compiled. In a fresh process, as numba reads it at import."""
    probe = (
        "from service.explanations import _shap; _shap(); "
        "from shap.maskers import _tabular; print(hasattr(_tabular._delta_masking, 'py_func'))"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "0"}
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "True", "the operator's NUMBA_DISABLE_JIT=0 was overridden"
