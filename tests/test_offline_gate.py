"""The rollouts' offline gate (service/monitor/offline_gate.py) on the demo models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

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


def test_references_whose_label_columns_are_named_differently_are_compared(demo_models, tmp_path):
    diabetes = demo_models["diabetes:v1"]
    renamed = pd.read_csv(diabetes.reference_path).rename(columns={"label": "target"})
    renamed.to_csv(tmp_path / "target.csv", index=False)
    tag = registry.add_model(
        diabetes.onnx_path, "diabetes", tmp_path / "target.csv", version="v8", label_column="target"
    ).tag
    result = offline_gate("diabetes:v1", tag, margin=0.05)
    assert result.outcome == "PASS" and math.isfinite(result.statistic["stable"]), result
    assert result.statistic["rows"] == len(renamed)  # the same rows, counted once
