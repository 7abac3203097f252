"""trainer/promotion.py: the gate's checks, and promote() on real exports scored on a real (tiny) test split.

Models of known quality without training: `stripe_model` sees the easy task's stripes (tests/corpus.py: cats have
horizontal ones, dogs vertical) through fixed gradient filters; strength 1 is nearly always right, -1 nearly always
wrong, 0 answers 0.5 for everything.
"""

import json

import numpy as np
import pytest

from tests.trainer.datasets import write_dataset
from trainer import evaluate, export, model_contract, promotion, publish

SIZE = 32
GATE = promotion.Gate(min_accuracy=0.8, min_roc_auc=0.85, max_regression=0.01)


def stripe_model(strength: float):
    """Keras model: probability of dog (vertical stripes) from the mean horizontal vs vertical gradient."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    gradients = keras.layers.Conv2D(4, 2, activation="relu", use_bias=False)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(gradients)
    outputs = keras.layers.Dense(1, activation="sigmoid")(pooled)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((2, 2, 3, 4), np.float32)
    kernel[0, 0, :, 0], kernel[0, 1, :, 0] = -1, 1  # +d/dx
    kernel[0, 0, :, 1], kernel[0, 1, :, 1] = 1, -1  # -d/dx
    kernel[0, 0, :, 2], kernel[1, 0, :, 2] = -1, 1  # +d/dy
    kernel[0, 0, :, 3], kernel[1, 0, :, 3] = 1, -1  # -d/dy
    model.layers[1].set_weights([kernel])
    model.layers[3].set_weights([np.array([[1], [1], [-1], [-1]], np.float32) * 0.1 * strength,
                                 np.zeros(1, np.float32)])
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), size=SIZE,
                         per_class={"train": 4, "validation": 4, "test": 24}, num_shards=2)


def publish_model(root, strength: float, version: str) -> str:
    return export.export_model(stripe_model(strength), str(root), class_names=["cat", "dog"],
                               input_size=[SIZE, SIZE], model_name=f"stripes{strength:+g}", version=version)


def promote(model, root, dataset, gate=GATE):
    return promotion.promote(model, export_root=str(root), data_dir=str(dataset), split="test",
                             image_size=[SIZE, SIZE], class_names=["cat", "dog"], model_name="candidate",
                             metrics={"accuracy": None}, training_data={"finished_at": "2026-01-01T00:00:00Z"},
                             gate=gate)


def test_checks_thresholds_and_regression():
    good = {"examples": 10, "accuracy": 0.9, "roc_auc": 0.95}
    assert all(c["passed"] for c in promotion.decide(good, None, GATE))
    assert [c["check"] for c in promotion.decide({**good, "accuracy": 0.7}, None, GATE) if not c["passed"]] == [
        "accuracy >= min_accuracy"]
    assert not promotion.decide({**good, "roc_auc": None}, None, GATE)[1]["passed"]  # one class: no ROC AUC
    baseline = {"version": "1", "metrics": {"accuracy": 0.905, "roc_auc": 0.97}}
    failed = [c["check"] for c in promotion.decide(good, baseline, GATE) if not c["passed"]]
    assert failed == ["ROC AUC >= baseline ROC AUC - max_regression"]  # 0.95 < 0.96; accuracy 0.9 >= 0.895
    off = promotion.Gate(min_accuracy=0, min_roc_auc=0, max_regression=1)
    assert promotion.decide({"examples": 10, "accuracy": 0.1, "roc_auc": None}, baseline, off)[0]["passed"]
    assert not promotion.decide({"examples": 0}, None, off)[0]["passed"]  # an empty test split never passes
    other_classes = {"version": "1", "comparable": False, "problem": "other class names"}
    assert not promotion.decide(good, other_classes, GATE)[-1]["passed"]


def test_the_first_model_needs_no_baseline(dataset, tmp_path):
    root = tmp_path / "export"
    outcome = promote(stripe_model(1), root, dataset)
    assert outcome.exit_code == 0 and outcome.record["published"] and outcome.record["baseline"] is None
    assert publish.read_latest(str(root)).version == outcome.record["version"]
    info = json.loads((root / outcome.record["version"] / model_contract.MODEL_INFO).read_text())
    assert info["promotion"]["blessed"] and info["promotion"]["decision"] == "blessed"


def test_a_worse_model_is_kept_but_not_published(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    publish_model(root, 1, "1700000000")
    before = publish.read_latest(str(root))
    outcome = promote(stripe_model(0), root, dataset, promotion.Gate(0, 0, 0.01))  # only the comparison can fail
    assert outcome.exit_code == promotion.EXIT_NOT_BLESSED and not outcome.record["published"]
    assert publish.read_latest(str(root)) == before
    info = json.loads((root / outcome.record["version"] / model_contract.MODEL_INFO).read_text())
    assert not info["promotion"]["blessed"] and "baseline accuracy" in info["promotion"]["reasons"][0]
    assert info["promotion"]["baseline"]["metrics"]["accuracy"] >= 0.95
    assert info["promotion"]["candidate"]["accuracy"] == 0.5 and info["promotion"]["candidate"]["roc_auc"] == 0.5
    out = capsys.readouterr().out
    assert "baseline (latest: version 1700000000)" in out and "NOT BLESSED" in out and "--allow_unblessed" in out


def test_a_better_model_replaces_latest_and_force_publish_overrides_the_gate(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    publish_model(root, -1, "1700000000")
    better = promote(stripe_model(1), root, dataset)
    assert better.exit_code == 0 and publish.read_latest(str(root)).version == better.record["version"]
    assert better.record["baseline"]["metrics"]["roc_auc"] <= 0.05 and better.record["candidate"]["roc_auc"] >= 0.95

    forced = promote(stripe_model(0), root, dataset, promotion.Gate(0.8, 0.85, 0.01, force_publish=True))
    assert forced.exit_code == 0 and forced.record["decision"] == "forced" and not forced.record["blessed"]
    assert publish.read_latest(str(root)).version == forced.record["version"]
    assert "--force_publish: publishing as latest although the gate refused it" in capsys.readouterr().err


def test_a_model_published_while_the_gate_ran_is_not_replaced(dataset, tmp_path, monkeypatch):
    root = tmp_path / "export"
    publish_model(root, -1, "1700000000")
    real_fetch = publish.fetch_version

    def another_trainer_publishes_meanwhile(export_root, version):
        fetched = real_fetch(export_root, version)
        publish_model(root, 1, "1800000000")
        return fetched

    monkeypatch.setattr(publish, "fetch_version", another_trainer_publishes_meanwhile)
    outcome = promote(stripe_model(1), root, dataset)
    assert outcome.exit_code == promotion.EXIT_NOT_BLESSED and outcome.record["decision"] == "superseded"
    assert publish.read_latest(str(root)).version == "1800000000" and outcome.record["latest"] == "1800000000"


def test_a_baseline_that_cannot_be_verified_leaves_the_thresholds_to_decide(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    published = publish_model(root, 1, "1700000000")
    with open(f"{published}/saved_model.pb", "ab") as handle:
        handle.write(b"\0")
    outcome = promote(stripe_model(1), root, dataset)
    assert outcome.exit_code == 0 and "has sha256" in outcome.record["baseline"]["problem"]
    assert "judged on the thresholds alone" in capsys.readouterr().err


def test_the_gate_scores_like_the_training_evaluation(dataset):
    """The candidate's gate metrics come from its export; they must agree with the Keras model's on the split."""
    import tensorflow as tf

    from trainer import data

    model = stripe_model(0.3)
    staging = export.stage_export(model, class_names=["cat", "dog"], input_size=[SIZE, SIZE])
    try:
        gated = promotion.score_export(staging, data_dir=str(dataset), split="test", image_size=[SIZE, SIZE],
                                       class_names=["cat", "dog"])
    finally:
        tf.io.gfile.rmtree(staging)
    test_data = data.make_dataset(str(dataset), "test", image_size=[SIZE, SIZE], batch_size=16, training=False)
    direct = evaluate.compute_metrics(*evaluate.predict(model, test_data), ["cat", "dog"])
    assert gated["examples"] == direct["examples"] == 48
    assert gated["accuracy"] == direct["accuracy"] and gated["roc_auc"] == pytest.approx(direct["roc_auc"], abs=1e-6)


def test_a_finished_run_reports_its_recorded_exit_code(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert promotion.recorded_exit_code(str(metrics)) is None
    metrics.write_text(json.dumps({"accuracy": 0.9}))
    assert promotion.recorded_exit_code(str(metrics)) is None  # evaluated, not yet gated: run the gate
    metrics.write_text(json.dumps({"promotion": {"published": False}}))
    assert promotion.recorded_exit_code(str(metrics)) == promotion.EXIT_NOT_BLESSED
    metrics.write_text(json.dumps({"promotion": {"published": True}}))
    assert promotion.recorded_exit_code(str(metrics)) == 0
