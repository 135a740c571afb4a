"""The rollouts' offline gate (service/monitor/offline_gate.py) on the demo models."""

from __future__ import annotations

import numpy as np

from service import registry
from service.monitor.offline_gate import offline_gate


def test_a_candidate_as_good_as_stable_passes_and_a_reference_without_numbers_fails(
    regressor_v9, monkeypatch
):
    assert offline_gate("diabetes:v1", regressor_v9, margin=0.05).outcome == "PASS"
    stored = registry.load_reference

    def with_a_missing_label(tag: str):
        reference = stored(tag)
        reference.loc[3, "label"] = np.nan  # as a model registered before labels were checked
        return reference

    monkeypatch.setattr(registry, "load_reference", with_a_missing_label)
    result = offline_gate("diabetes:v1", regressor_v9, margin=0.05)
    assert result.outcome == "FAIL" and result.reason.startswith("cannot compare: mae nan")
