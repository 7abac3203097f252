import json

import numpy as np
import pytest
from PIL import Image

from trainer import evaluate


def test_metrics_on_a_hand_checked_example():
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    probabilities = [0.1, 0.4, 0.7, 0.8, 0.6, 0.3, 0.9, 0.2]
    metrics = evaluate.compute_metrics(labels, probabilities, ["cat", "dog"])
    # predicted dog: 0.7 (cat), 0.8, 0.6, 0.9 -> tp 3, fp 1, fn 1 (0.3), tn 3
    assert metrics["confusion_matrix"] == {"labels": ["cat", "dog"], "matrix": [[3, 1], [1, 3]]}
    assert metrics["accuracy"] == 0.75 and metrics["precision"] == 0.75 and metrics["recall"] == 0.75
    # AUC = share of (dog, cat) pairs ranked correctly: 13 of 16 pairs
    assert metrics["roc_auc"] == pytest.approx(13 / 16)
    expected_log_loss = -np.mean(np.log([0.9, 0.6, 0.3, 0.8, 0.6, 0.3, 0.9, 0.8]))
    assert metrics["log_loss"] == pytest.approx(expected_log_loss)
    json.dumps(metrics)  # serialisable as metrics.json


def test_auc_counts_ties_as_half_and_is_none_for_one_class():
    assert evaluate.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert evaluate.roc_auc([0, 0, 1, 1], [0.2, 0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert evaluate.roc_auc([1, 1], [0.2, 0.9]) is None
    assert evaluate.compute_metrics([0, 1], [0.0, 1.0], ["cat", "dog"])["log_loss"] < 1e-6  # clipped, finite


def test_report_png_is_written(tmp_path):
    history = [{"epoch": 1, "loss": 0.7, "accuracy": 0.5, "val_loss": 0.69, "val_accuracy": 0.55},
               {"epoch": 2, "loss": 0.4, "accuracy": 0.8, "val_loss": 0.5, "val_accuracy": 0.75}]
    labels, probabilities = np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.1])
    metrics = evaluate.compute_metrics(labels, probabilities, ["cat", "dog"])
    path = tmp_path / "report.png"
    evaluate.write_report(str(path), history, metrics, labels, probabilities, title="test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800


def test_mistakes_png_shows_the_photos_furthest_from_their_label(tmp_path):
    import tensorflow as tf

    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.float64)
    probabilities = np.array([0.1, 0.2, 0.95, 0.99, 0.6, 0.4, 0.05, 0.5])
    # the worst first: 0.99 for a cat, 0.2 for a dog, then 0.5 and 0.4/0.6 (ties keep the split's order)
    assert list(evaluate.most_wrong(labels, probabilities, 4)) == [3, 1, 7, 4]
    # each photo a flat grey whose value is its index, so the picture can be checked against the indices
    images = np.stack([np.full((16, 16, 3), 30 * i, np.float32) for i in range(8)])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    path = tmp_path / "mistakes.png"
    shown = evaluate.write_mistakes(str(path), dataset, labels, probabilities, ["cat", "dog"], count=4)
    assert shown == [3, 1, 7, 4]
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 400
