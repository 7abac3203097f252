"""Evaluation on the test split: metrics.json, report.png and mistakes.png.

Metrics (numpy only, threshold 0.5 on the probability of class_names[1]): accuracy, precision, recall, ROC AUC,
log loss and the confusion matrix. report.png shows the training curves (loss and accuracy, train vs validation,
by epoch numbered from 1), the confusion matrix and the ROC curve. mistakes.png shows the photos the model gets
most wrong, each with its label and probability: where label noise and real failures show at a glance.
"""

import csv
import json
import math

import numpy as np

EPSILON = 1e-7


def predict(model, dataset, tta: str = "none"):
    """(labels, probabilities) as float numpy arrays, from a plain loop: no distribution strategy involved.
    tta "flip": the mean of the probabilities of each image and its mirror image, as the export computes it."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(images):
        probability = tf.reshape(tf.cast(model(images, training=False), tf.float32), [-1])
        if tta == "flip":
            mirrored = tf.reshape(tf.cast(model(tf.reverse(images, axis=[2]), training=False), tf.float32), [-1])
            probability = (probability + mirrored) / 2
        return probability

    labels, probabilities = [], []
    for images, batch_labels in dataset:
        probabilities.append(forward(images).numpy())
        labels.append(batch_labels.numpy())
    if not labels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(labels).astype(np.float64), np.concatenate(probabilities).astype(np.float64)


def roc_curve(labels, probabilities):
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels, np.float64)
    order = np.argsort(-np.asarray(probabilities, np.float64), kind="stable")
    scores, ordered = np.asarray(probabilities)[order], labels[order]
    distinct = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]  # last index of each run of equal scores
    true_positives = np.cumsum(ordered)[distinct]
    false_positives = (distinct + 1) - true_positives
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    tpr = np.r_[0.0, true_positives / positives] if positives else np.r_[0.0, np.zeros(len(distinct))]
    fpr = np.r_[0.0, false_positives / negatives] if negatives else np.r_[0.0, np.zeros(len(distinct))]
    return fpr, tpr


def roc_auc(labels, probabilities) -> float | None:
    """Area under the ROC curve (ties count half); None when the labels hold only one class."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    fpr, tpr = roc_curve(labels, probabilities)
    return float(np.trapezoid(tpr, fpr))


def compute_metrics(labels, probabilities, class_names, threshold: float = 0.5) -> dict:
    labels = np.asarray(labels, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    predicted = probabilities >= threshold
    actual = labels >= 0.5
    tp = int(np.sum(predicted & actual))
    tn = int(np.sum(~predicted & ~actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    n = len(labels)
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    log_loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if n else None
    return {
        "examples": n,
        "threshold": threshold,
        "positive_class": class_names[1],
        "accuracy": (tp + tn) / n if n else None,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "roc_auc": roc_auc(labels, probabilities),
        "log_loss": log_loss,
        # rows: actual class, columns: predicted class, both in class_names order
        "confusion_matrix": {"labels": list(class_names), "matrix": [[tn, fp], [fn, tp]]},
    }


def write_metrics(path: str, metrics: dict) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def read_history(path: str) -> list[dict]:
    """history.csv rows as dicts of floats (CSVLogger writes one row per epoch, with an `epoch` column)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        rows = list(csv.DictReader(handle))
    history = []
    for row in rows:
        try:
            history.append({key: float(value) for key, value in row.items() if value not in (None, "")})
        except ValueError:
            continue
    return history


def write_report(path: str, history: list[dict], metrics: dict, labels, probabilities, title: str = "") -> None:
    """A 2x2 PNG: loss curves, accuracy curves, confusion matrix, ROC curve."""

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 9))
    epochs = [int(row.get("epoch", i + 1)) for i, row in enumerate(history)]  # history.csv counts from 1
    for ax, key, label in ((axes[0, 0], "loss", "loss (binary cross-entropy)"), (axes[0, 1], "accuracy", "accuracy")):
        for prefix, style, name in (("", "o-", "train"), ("val_", "s--", "validation")):
            values = [row.get(prefix + key, math.nan) for row in history]
            if any(not math.isnan(v) for v in values):
                ax.plot(epochs, values, style, label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"training curves: {key}")
        ax.grid(alpha=0.3)
        if history:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes)

    ax = axes[1, 0]
    matrix = np.asarray(metrics["confusion_matrix"]["matrix"])
    names = metrics["confusion_matrix"]["labels"]
    ax.imshow(matrix, cmap="Blues", vmin=0)
    for (row, column), count in np.ndenumerate(matrix):
        share = count / max(matrix[row].sum(), 1)
        dark = count > matrix.max() / 2
        ax.text(column, row, f"{count}\n({share:.1%} of row)", ha="center", va="center",
                color="white" if dark else "black", fontsize=12)
    ax.set_xticks(range(len(names)), [f"predicted {name}" for name in names])
    ax.set_yticks(range(len(names)), [f"actual {name}" for name in names])
    accuracy = metrics.get("accuracy")
    ax.set_title(f"test confusion matrix (n={metrics['examples']}"
                 + (f", accuracy {accuracy:.3f})" if accuracy is not None else ")"))

    ax = axes[1, 1]
    if metrics.get("roc_auc") is not None:
        fpr, tpr = roc_curve(labels, probabilities)
        ax.plot(fpr, tpr, lw=2, label=f"model (AUC {metrics['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false positive rate ({names[0]} called {names[1]})")
    ax.set_ylabel(f"true positive rate ({names[1]} found)")
    ax.set_title("test ROC curve")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)

    if title:
        figure.suptitle(title)
    save_png(figure, path, dpi=100)


def save_png(figure, path: str, dpi: int) -> None:
    """Writes a matplotlib figure as PNG to a local or gs:// path (through memory: matplotlib cannot write to gs://)
    and closes it."""
    import io

    import matplotlib.pyplot as plt
    import tensorflow as tf

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())


def most_wrong(labels, probabilities, count: int) -> np.ndarray:
    """Indices of the `count` examples whose probability is furthest from their label, the worst first."""
    wrongness = np.abs(np.asarray(labels, np.float64) - np.asarray(probabilities, np.float64))
    return np.argsort(-wrongness, kind="stable")[:count]


def write_mistakes(path: str, dataset, labels, probabilities, class_names, count: int = 24, title: str = "") -> list:
    """A grid of the `count` photos of dataset (the same deterministic pass that gave labels and probabilities)
    the model gets most wrong, each titled with its label and the probability of class_names[1]. Returns their
    indices in the split."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [int(i) for i in most_wrong(labels, probabilities, count)]
    wanted, images, index = set(chosen), {}, 0
    for batch, _ in dataset:
        for image in batch.numpy():
            if index in wanted:
                images[index] = np.clip(image, 0, 255).astype(np.uint8)
            index += 1
    columns = 6
    rows = max(1, math.ceil(len(chosen) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen, strict=False):
        ax.imshow(images[i])
        actual = class_names[int(labels[i] >= 0.5)]
        wrong = (probabilities[i] >= 0.5) != (labels[i] >= 0.5)
        ax.set_title(f"#{i}: actually {actual}\nP({class_names[1]}) = {probabilities[i]:.2f}", fontsize=9,
                     color="firebrick" if wrong else "black")
    figure.suptitle(f"the {len(chosen)} photos the model gets most wrong (label, probability; red: misclassified)"
                    + (f"\n{title}" if title else ""), fontsize=10)
    save_png(figure, path, dpi=80)
    return chosen
