"""Model registration: cards read from the graph, reference predictions stored, bad files refused."""

from __future__ import annotations

import bentoml
import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from service import registry
from service.config import parse_config
from service.errors import ConfigError
from service.gateway.models import check_models
from service.runtime import resolve_providers
from tests.helpers import write_graph


def test_demo_classifier_card(demo_models):
    card = registry.load_card("cancer:v1")
    assert card.task == "classification"
    assert card.class_labels == ("benign", "malignant")
    assert card.label_output == "label" and card.probability_output == "probabilities"
    assert len(card.feature_names) == 30 and card.feature_names[0] == "mean_radius"
    assert card.inputs[0].shape == (-1, 30) and card.inputs[0].datatype == "FP32"
    assert len(card.sha256) == 64


def test_reference_holds_labels_and_the_models_own_predictions(demo_models):
    reference = registry.load_reference("cancer:v1")
    source = pd.read_csv(demo_models["cancer:v1"].reference_path)
    assert len(reference) == len(source)
    assert {"label", "prediction", "proba_benign", "proba_malignant"} <= set(reference.columns)
    accuracy = (reference["prediction"] == reference["label"]).mean()
    assert accuracy > 0.9
    np.testing.assert_allclose(
        reference["proba_benign"] + reference["proba_malignant"], 1, atol=1e-5
    )


def test_regression_card(demo_models):
    card = registry.load_card("diabetes:v1")
    assert card.task == "regression" and card.value_output is not None
    assert registry.load_reference("diabetes:v1")["prediction"].std() > 0


def test_listing_shows_registered_versions(demo_models):
    tags = {card.tag for card in registry.list_cards()}
    assert {"cancer:v1", "cancer:v2", "diabetes:v1"} <= tags


def test_refusals_say_what_is_wrong(demo_models, tmp_path):
    cancer = demo_models["cancer:v1"]
    diabetes = demo_models["diabetes:v1"]
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"\x00garbage")
    cases = [
        (dict(model_file=not_onnx, reference_file=cancer.reference_path), "not a valid ONNX model"),
        (
            dict(model_file=tmp_path / "missing.onnx", reference_file=cancer.reference_path),
            "does not exist",
        ),
        (
            dict(model_file=cancer.onnx_path, reference_file=diabetes.reference_path),
            "schema mismatch",
        ),
        (dict(model_file=cancer.onnx_path, reference_file=tmp_path / "r.json"), ".csv or .parquet"),
    ]
    for kwargs, reason in cases:
        with pytest.raises(ConfigError, match=reason):
            registry.add_model(name="refused", **kwargs)
    text_reference = pd.read_csv(cancer.reference_path).assign(mean_radius="big")
    text_reference.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ConfigError, match="not numeric"):
        registry.add_model(cancer.onnx_path, "refused", tmp_path / "text.csv")
    with pytest.raises(ConfigError, match="no label column 'target'"):
        registry.add_model(
            cancer.onnx_path, "refused", cancer.reference_path, label_column="target"
        )
    with pytest.raises(ConfigError, match="already exists"):
        registry.add_model(cancer.onnx_path, "cancer", cancer.reference_path, version="v1")
    assert "refused" not in {card.name for card in registry.list_cards()}


def test_a_name_or_version_the_store_cannot_keep_is_refused_and_breaks_nothing(demo_models):
    """``latest`` as a version made a directory where BentoML keeps its pointer to the newest
    version: that add failed with a traceback, and every later version of the name too. A
    name that is not one (``../x``) was a traceback as well."""
    cancer = demo_models["cancer:v1"]
    for name, version, reason in [
        ("pointer", "latest", "alias for a model's newest version"),
        ("pointer", "LATEST", "alias for a model's newest version"),
        ("../x", None, "model's name must be 1-64 characters"),
        ("x", "a/b", "model's version must be 1-64 characters"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            registry.add_model(cancer.onnx_path, name, cancer.reference_path, version=version)
    card = registry.add_model(cancer.onnx_path, "pointer", cancer.reference_path, version="v1")
    assert registry.load_card("pointer:latest") == card  # BentoML's alias, still its own


def test_a_variant_must_name_a_version_not_the_latest_alias(demo_models):
    variant = {"name": "stable", "model": "cancer:Latest"}
    with pytest.raises(ConfigError, match="names no version"):
        parse_config({"endpoints": {"e": {"variants": [variant]}}})


def test_generated_version_and_parquet_reference(demo_models, tmp_path):
    cancer = demo_models["cancer:v1"]
    parquet = tmp_path / "reference.parquet"
    pd.read_csv(cancer.reference_path).to_parquet(parquet)
    card = registry.add_model(cancer.onnx_path, "cancer-parquet", parquet)
    assert card.version and registry.load_card(card.tag) == card


def test_a_model_is_named_as_the_store_names_it(demo_models):
    """BentoML lowercases a tag's name and version: the card says the same, so what a variant
    answers (its model and version) is what the store, the config and a pin call it."""
    cancer = demo_models["cancer:v1"]
    card = registry.add_model(cancer.onnx_path, "CancerNet", cancer.reference_path, version="V7")
    assert card.tag == "cancernet:v7"
    assert registry.load_card("CancerNet:V7") == card


def test_unknown_model_in_config_fails_planning(demo_models):
    config = parse_config({"endpoints": {"e": {"variants": [{"name": "a", "model": "ghost:v1"}]}}})
    with pytest.raises(ConfigError, match="ghost:v1 is not in the model store"):
        check_models(config, ["ghost:v1"])


def test_device_resolution_on_this_machine(demo_models):
    model = registry.model_dir("cancer:v1") / "model.onnx"
    assert resolve_providers("cpu", model) == ["CPUExecutionProvider"]
    auto = resolve_providers("auto", model)
    assert auto[-1] == "CPUExecutionProvider"
    if auto[0] != "CUDAExecutionProvider":
        with pytest.raises(ConfigError, match="CUDA is not usable"):
            resolve_providers("cuda", model)


def test_graph_onnxruntime_cannot_load_is_refused(demo_models, tmp_path):
    weight = numpy_helper.from_array(np.ones((30, 1), np.float64), "W")
    path = write_graph(
        tmp_path / "mixed.onnx",
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        [weight],
        features=30,
    )
    reference = demo_models["cancer:v1"].reference_path
    with pytest.raises(ConfigError, match="(cannot load the model|not a valid ONNX model)"):
        registry.add_model(path, "mixed", reference)


def _argmax_classifier(path) -> None:
    """A two-feature classifier whose graph stores no class labels (as skl2onnx writes one for
    double inputs): its label output is the index of the larger feature."""
    write_graph(
        path,
        [
            helper.make_node("ArgMax", ["X"], ["label"], axis=1, keepdims=0),
            helper.make_node("Softmax", ["X"], ["probabilities"], axis=1),
        ],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
    )


def test_labels_the_model_does_not_predict_are_refused(demo_models, tmp_path):
    model = tmp_path / "argmax.onnx"
    _argmax_classifier(model)
    rows = pd.DataFrame({"a": [0.1, 0.9, 0.3, 0.8], "b": [0.7, 0.2, 0.6, 0.1]})
    rows.assign(label=["low", "high", "low", "high"]).to_csv(tmp_path / "named.csv", index=False)
    with pytest.raises(ConfigError, match=r"predicts labels \[0, 1\].*not among its classes"):
        registry.add_model(model, "argmax", tmp_path / "named.csv", version="named")
    assert "argmax" not in {card.name for card in registry.list_cards()}

    rows.assign(label=[1, 0, 1, 0]).to_csv(tmp_path / "indexes.csv", index=False)
    card = registry.add_model(model, "argmax", tmp_path / "indexes.csv", version="indexes")
    assert card.class_labels == (0, 1)
    assert registry.load_reference(card.tag)["prediction"].tolist() == [1, 0, 1, 0]


def test_an_endpoint_whose_variants_take_other_inputs_fails_planning(regressor_v9):
    def endpoint(*models: str) -> dict:
        variants = [{"name": f"v{i}", "model": m, "weight": 1} for i, m in enumerate(models)]
        return {"endpoints": {"e": {"variants": variants}}}

    check_models(parse_config(endpoint("cancer:v1", "cancer:v2")), ["cancer:v1", "cancer:v2"])
    mixed = parse_config(endpoint("cancer:v1", regressor_v9))
    with pytest.raises(ConfigError, match="'v1' .diabetes:v9. cannot serve beside .* regression"):
        check_models(mixed, ["cancer:v1", regressor_v9])


def test_a_model_must_answer_one_prediction_per_row_for_any_number_of_rows(demo_models, tmp_path):
    rows = pd.DataFrame({"a": [0.1, 0.9, 0.3, 0.8], "b": [0.7, 0.2, 0.6, 0.1]})
    rows.assign(label=rows.a + rows.b).to_csv(tmp_path / "sums.csv", index=False)
    two_targets = write_graph(
        tmp_path / "two-targets.onnx",
        [helper.make_node("Identity", ["X"], ["value"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 2])],
    )
    with pytest.raises(ConfigError, match="'value' gives 8 values for 4 reference rows"):
        registry.add_model(two_targets, "two-targets", tmp_path / "sums.csv")
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    one_row = write_graph(
        tmp_path / "one-row.onnx",
        [helper.make_node("ReduceSum", ["X", "axis"], ["value"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 1])],
        [axis],
        rows=1,
    )
    with pytest.raises(ConfigError, match=r"fixed shape \[1, 2\].*variable first dimension"):
        registry.add_model(one_row, "one-row", tmp_path / "sums.csv")
    refused = {"two-targets", "one-row"}
    assert not refused & {card.name for card in registry.list_cards()}


def test_reference_labels_must_be_there_and_a_regressors_must_be_numbers(demo_models, tmp_path):
    cancer, diabetes = demo_models["cancer:v1"], demo_models["diabetes:v1"]
    unlabeled = pd.read_csv(cancer.reference_path)
    unlabeled.loc[[3, 7], "label"] = None
    unlabeled.to_csv(tmp_path / "unlabeled.csv", index=False)
    with pytest.raises(ConfigError, match="2 rows without a label in 'label'"):
        registry.add_model(cancer.onnx_path, "unlabeled", tmp_path / "unlabeled.csv")
    regression = pd.read_csv(diabetes.reference_path)
    cases = {
        "text": regression.assign(label=np.where(regression.index % 2, "high", "low")),
        "infinite": regression.assign(label=regression.label.where(regression.index != 5, np.inf)),
    }
    for name, table in cases.items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        with pytest.raises(ConfigError, match="regressor's reference labels are finite numbers"):
            registry.add_model(diabetes.onnx_path, name, tmp_path / f"{name}.csv")
    refused = {"unlabeled", *cases}
    assert not refused & {card.name for card in registry.list_cards()}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
def test_reference_features_must_be_finite_in_the_models_input_type(demo_models, tmp_path, value):
    """The reference is what drift compares against: an infinity there made its column's drift
    score NaN for good (1e39 is an infinity in the model's FP32)."""
    cancer = demo_models["cancer:v1"]
    table = pd.read_csv(cancer.reference_path)
    table.loc[4, "mean_area"] = value
    table.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match=r"not finite numbers in FP32 .* \['mean_area'\]"):
        registry.add_model(cancer.onnx_path, "nonfinite", tmp_path / "bad.csv")
    assert "nonfinite" not in {card.name for card in registry.list_cards()}


@pytest.mark.parametrize("text", ["{not json", '{"name": "cut"}', "[]"])
def test_a_card_that_cannot_be_read_refuses_its_model_and_spares_the_others(demo_models, text):
    """A card edited by hand or cut short failed, with JSON's own error, everything that
    touched its model: the monitor's records of it, and the listing of every model."""
    cancer = demo_models["cancer:v1"]
    card = registry.add_model(cancer.onnx_path, "unreadable", cancer.reference_path)
    try:
        (registry.model_dir(card.tag) / "gateway.json").write_text(text)
        with pytest.raises(ConfigError, match="gateway.json cannot be read"):
            registry.load_card(card.tag)
        with pytest.raises(ConfigError, match="cannot be read"):
            check_models(
                parse_config(
                    {"endpoints": {"e": {"variants": [{"name": "a", "model": card.tag}]}}}
                ),
                [card.tag],
            )
        listed = {c.tag for c in registry.list_cards()}
        assert card.tag not in listed and "cancer:v1" in listed
        (registry.model_dir(card.tag) / "reference.parquet").write_text(text)
        with pytest.raises(ConfigError, match="reference.parquet cannot be read"):
            registry.load_reference(card.tag)
    finally:
        bentoml.models.delete(card.tag)


def test_class_labels_in_another_order_than_the_probability_columns_are_refused(demo_models):
    """Every answer said "benign" with 99% on "malignant", and explanations explained the
    other class."""
    cancer = demo_models["cancer:v1"]
    with pytest.raises(ConfigError, match="not in the order of the class labels"):
        registry.add_model(
            cancer.onnx_path, "swapped", cancer.reference_path, class_labels=["malignant", "benign"]
        )
    card = registry.add_model(
        cancer.onnx_path, "ordered", cancer.reference_path, class_labels=["benign", "malignant"]
    )
    assert card.class_labels == ("benign", "malignant")
    assert "swapped" not in {c.name for c in registry.list_cards()}


def test_a_csv_that_names_a_column_twice_is_refused(demo_models, tmp_path):
    """pandas renames the second one (``mean_area.1``), which would have been the feature's name
    in requests, drift and explanations."""
    cancer = demo_models["cancer:v1"]
    text = cancer.reference_path.read_text().replace("worst_area", "mean_area", 1)
    (tmp_path / "twice.csv").write_text(text)
    with pytest.raises(ConfigError, match=r"names columns more than once: \['mean_area'\]"):
        registry.add_model(cancer.onnx_path, "twice", tmp_path / "twice.csv")


def test_a_csv_reads_text_classes_that_look_like_numbers_as_the_models_classes(
    demo_models, tmp_path
):
    """A classifier trained on the text labels "0" and "1" stores them in its graph; pandas reads
    a CSV reference's 0 and 1 as numbers, which are not those classes."""
    classifier = helper.make_node(
        "LinearClassifier",
        ["X"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        coefficients=[-1.0, 1.0, 1.0, -1.0],
        intercepts=[0.0, 0.0],
        classlabels_strings=["0", "1"],
        post_transform="SOFTMAX",
    )
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, [None]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
    ]
    path = write_graph(tmp_path / "text-classes.onnx", [classifier], outputs)
    rows = pd.DataFrame({"a": [0.1, 0.9, 0.3, 0.8], "b": [0.7, 0.2, 0.6, 0.1]})
    rows.assign(label=[0, 1, 0, 1]).to_csv(tmp_path / "numbers.csv", index=False)
    card = registry.add_model(path, "text-classes", tmp_path / "numbers.csv")
    assert card.class_labels == ("0", "1")
    reference = registry.load_reference(card.tag)
    assert reference["label"].tolist() == reference["prediction"].tolist() == ["0", "1", "0", "1"]


def test_a_model_whose_features_are_text_is_refused(demo_models, tmp_path):
    """It served over OIP, but plain JSON refused its rows and every drift run failed on them."""
    encode = helper.make_node(
        "LabelEncoder", ["X"], ["codes"], domain="ai.onnx.ml", classes_strings=["a", "b"]
    )
    path = write_graph(
        tmp_path / "text-features.onnx",
        [encode, helper.make_node("Cast", ["codes"], ["value"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 1])],
        features=1,
        input_type=TensorProto.STRING,
    )
    rows = pd.DataFrame({"c": ["a", "b"] * 60, "label": [0.0, 1.0] * 60})
    rows.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ConfigError, match=r"input 'X' takes text \(BYTES\)"):
        registry.add_model(path, "text-features", tmp_path / "text.csv")
    assert "text-features" not in {card.name for card in registry.list_cards()}
