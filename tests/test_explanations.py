"""What both explaining processes compute with (service/explanations.py), called directly; that
the attributions add up to the answers is tests/test_explain.py's, through the gateway."""

from __future__ import annotations

from service import registry
from service.explanations import SESSION_THREADS, _model


def test_an_explained_model_runs_on_one_onnxruntime_thread(demo_models) -> None:
    """A pool's threads spin between the many small masked batches: twice the CPU (the docs of
    ``SESSION_THREADS``), on a machine that serves too."""
    session, _ = _model(registry.load_card("cancer:v2"), 50)
    assert session.session.get_session_options().intra_op_num_threads == SESSION_THREADS == 1
