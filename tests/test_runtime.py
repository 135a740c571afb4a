"""onnxruntime sessions (service/runtime.py): pool threads sleep between runs unless asked to spin."""

from __future__ import annotations

import time

from service import registry
from service.model_card import MODEL_FILE
from service.runtime import CPU, SPINNING, ModelSession

RUNS = 300


def session_of(tag: str, **options) -> ModelSession:
    return ModelSession(
        registry.model_dir(tag) / MODEL_FILE, registry.load_card(tag), [CPU], **options
    )


def process_cpu_per_caller_cpu(session: ModelSession) -> float:
    """The process's CPU over the caller's while it runs the model now and then, as an event loop
    does between other work: what any other thread of the process burns meanwhile."""
    inputs = session.zeros(16)
    session.run(inputs)
    process, caller = time.process_time(), time.thread_time()
    for _ in range(RUNS):
        session.run(inputs)
        time.sleep(0.0005)
    return (time.process_time() - process) / (time.thread_time() - caller)


def test_pool_threads_sleep_between_runs_unless_spinning_is_asked_for(demo_models) -> None:
    """The demo's MLP (cancer:v2) is parallelised across onnxruntime's pool; spinning threads
    burnt a core beside the gateway's event loop and more than halved what it served."""
    quiet = session_of("cancer:v2")
    assert quiet.session.get_session_options().get_session_config_entry(SPINNING) == "0"
    assert process_cpu_per_caller_cpu(quiet) < 1.5  # spinning: about 3 here, on two cores
    spinning = session_of("cancer:v2", intra_op_spinning=True)
    assert spinning.session.get_session_options().get_session_config_entry(SPINNING) == "1"
