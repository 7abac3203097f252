"""The files a training run keeps in its --model_dir, and the checks that make re-running the same command safe:
a model_dir holding a run with another config is refused; a finished run is not repeated."""

import json

import tensorflow as tf

from trainer.storage import join

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.png"
MISTAKES_FILE = "mistakes.png"  # the test photos the model gets most wrong
BEST_WEIGHTS = "checkpoints/best.weights.h5"
EMA_WEIGHTS = "checkpoints/ema.weights.h5"  # the moving average at the end of training (with --ema_momentum)
BACKUP_DIR = "backup"
EXPORT_DIR = "export"


class ConfigMismatch(RuntimeError):
    pass


def check_config(model_dir: str, config: dict) -> dict | None:
    """The previous run's config.json, or None; refuses a model_dir that holds a run with a different config."""
    path = join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        previous = json.load(handle)
    before = previous.get("config", {})
    changed = {key: (before.get(key), config.get(key)) for key in sorted(set(before) | set(config))
               if before.get(key) != config.get(key)}
    if changed:
        details = ", ".join(f"--{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ConfigMismatch(f"{model_dir} holds a run with a different config ({details}). Re-run with the same "
                             f"flags to resume it, or use a new --model_dir (or delete {model_dir}) to start over.")
    return previous
