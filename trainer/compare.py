"""Compare finished training runs: the default model against the `seed_cnn` baseline under the same time budget.

    python -m trainer.compare work/model work/seed_cnn            # or: make baseline (trains the baseline first)

Reads each run's metrics.json (test-split metrics, training time, why it stopped), config.json and history.csv, and
writes into the FIRST run's directory:
- comparison.md: one row per run (model, network input size, epochs, training minutes, how training stopped, test
  accuracy, precision, recall, ROC AUC, log loss) and the accuracy difference to the first run;
- comparison.png: validation accuracy against training minutes for every run, and the test accuracies side by side.
Training minutes on the curve's x axis are the run's training time spread evenly over its epochs.
"""

import argparse
import json
import sys

from trainer import evaluate

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
OUTPUT_MD = "comparison.md"
OUTPUT_PNG = "comparison.png"


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def load_run(model_dir: str) -> dict:
    """A finished run's metrics, resolved config and history; FileNotFoundError naming what is missing."""
    import tensorflow as tf

    path = _join(model_dir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a finished training run "
                                f"(train it first: make train-only MODEL_DIR={model_dir})")
    with tf.io.gfile.GFile(path) as handle:
        metrics = json.load(handle)
    resolved = {}
    if tf.io.gfile.exists(_join(model_dir, CONFIG_FILE)):
        with tf.io.gfile.GFile(_join(model_dir, CONFIG_FILE)) as handle:
            resolved = json.load(handle)
    return {"dir": model_dir, "metrics": metrics, "resolved": resolved,
            "history": evaluate.read_history(_join(model_dir, HISTORY_FILE))}


def _minutes(run: dict) -> float | None:
    seconds = run["metrics"].get("train_seconds_this_run")
    return None if seconds is None else seconds / 60


def table(runs: list[dict]) -> str:
    reference = runs[0]["metrics"].get("accuracy")
    lines = ["| run | model | input | epochs | training min | stopped by | test accuracy | vs first | precision | "
             "recall | ROC AUC | log loss | test images |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        m = run["metrics"]
        size = run["resolved"].get("network_input_size") or run["resolved"].get("image_size") or ["?", "?"]
        minutes = _minutes(run)
        accuracy = m.get("accuracy")
        delta = "" if accuracy is None or reference is None else f"{(accuracy - reference) * 100:+.1f} pts"
        lines.append(
            f"| `{run['dir']}` | {m.get('model', '?')} | {size[0]}x{size[1]} | {m.get('epochs_completed', '?')} | "
            f"{'?' if minutes is None else f'{minutes:.1f}'} | {m.get('stopped_by', '?')} | {_fmt(accuracy)} | "
            f"{delta} | {_fmt(m.get('precision'))} | {_fmt(m.get('recall'))} | {_fmt(m.get('roc_auc'))} | "
            f"{_fmt(m.get('log_loss'))} | {m.get('examples', '?')} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "?" if value is None else f"{value:.4f}"


def write_png(path: str, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    names = []
    for run in runs:
        name = f"{run['metrics'].get('model', '?')} ({run['dir'].rstrip('/').rsplit('/', 1)[-1]})"
        names.append(name)
        history, minutes = run["history"], _minutes(run)
        values = [row.get("val_accuracy") for row in history]
        if history and minutes and all(v is not None for v in values):
            per_epoch = minutes / len(history)
            curves.plot([per_epoch * (i + 1) for i in range(len(history))], values, "o-", markersize=4, label=name)
    curves.set_xlabel("training time (minutes)")
    curves.set_ylabel("validation accuracy")
    curves.set_title("validation accuracy over training time")
    curves.grid(alpha=0.3)
    if curves.lines:
        curves.legend(loc="lower right")
    accuracies = [run["metrics"].get("accuracy") or 0.0 for run in runs]
    bars.bar(range(len(runs)), accuracies, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][:len(runs)])
    for i, accuracy in enumerate(accuracies):
        bars.text(i, accuracy + 0.005, f"{accuracy:.3f}", ha="center")
    bars.set_xticks(range(len(runs)), [name.split(" ")[0] for name in names])
    bars.set_ylim(min(0.5, *accuracies), 1.0)
    bars.set_ylabel("test accuracy")
    bars.set_title("test split")
    evaluate.save_png(figure, path, dpi=100)


def compare(model_dirs: list[str]) -> str:
    """Writes comparison.md and comparison.png into model_dirs[0]; returns the markdown."""
    import tensorflow as tf

    runs = [load_run(directory) for directory in model_dirs]
    markdown = "\n".join([
        "# Training runs compared", "",
        "Test-split metrics from each run's metrics.json (threshold 0.5); training minutes exclude evaluation and "
        "export.", "", table(runs), "", f"![validation accuracy over time]({OUTPUT_PNG})", ""])
    with tf.io.gfile.GFile(_join(model_dirs[0], OUTPUT_MD), "w") as handle:
        handle.write(markdown)
    write_png(_join(model_dirs[0], OUTPUT_PNG), runs)
    return markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="+", help="finished runs (local or gs://); the first is the reference "
                        "and receives comparison.md and comparison.png")
    args = parser.parse_args(argv)
    try:
        print(compare(args.model_dirs))
    except FileNotFoundError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    print(f"compare: wrote {_join(args.model_dirs[0], OUTPUT_MD)} and {OUTPUT_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
