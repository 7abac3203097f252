"""What a training run derives from its config, the dataset's metadata and the placement (`Plan`: batch, learning
rate, steps, sizes, caching; recorded in config.json), and where this process writes (`Outputs`)."""

import dataclasses
import math
import tempfile

import tensorflow as tf

from trainer import config as config_lib
from trainer import data, distribute, model_dir
from trainer.storage import join


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run derives from its config, the dataset and the placement; recorded in config.json."""

    image_size: list  # the dataset's (h, w)
    network_size: list  # the (h, w) the network works at
    start_side: int | None  # progressive resizing: the side training starts at; None: network_size throughout
    class_names: list
    global_batch: int
    peak_rate: float
    train_count: int
    validation_count: int
    steps_per_epoch: int
    warmup_steps: int
    total_steps: int
    head_epochs: int
    cache: bool
    cache_start_side: bool  # also a cache of the training split at start_side (progressive resizing's first phase)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where this process writes: the chief into model_dir, other workers into a temp dir of their own."""

    out_dir: str
    backup_dir: str  # the chief's: every worker resumes from it
    history: str
    best_weights: str


def plan_run(cfg: config_lib.TrainConfig, metadata: dict, placement: distribute.Placement) -> Plan:
    image_size = [int(v) for v in metadata["image_size"]]
    train_count, validation_count = data.split_size(metadata, "train"), data.split_size(metadata, "validation")
    if train_count == 0:
        raise data.DatasetMissing(f"{cfg.data_dir} has no training examples (metadata counts: {metadata['counts']})")
    global_batch = cfg.batch_size * placement.num_replicas
    steps_per_epoch = max(1, math.ceil(train_count / global_batch))
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    network_size, start_side = cfg.model_input_size(image_size), cfg.start_side(image_size)
    splits = ("train", "validation")
    return Plan(
        image_size=image_size, network_size=network_size, start_side=start_side,
        class_names=list(metadata["class_names"]),
        global_batch=global_batch, peak_rate=distribute.scaled_learning_rate(cfg.learning_rate, placement.num_replicas),
        train_count=train_count, validation_count=validation_count, steps_per_epoch=steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), total_steps=cfg.epochs * steps_per_epoch,
        head_epochs=cfg.head_only_epochs(),
        cache=data.should_cache(cfg.cache, metadata, splits, cfg.cache_limit_mb, size=network_size),
        cache_start_side=start_side is not None and data.should_cache(cfg.cache, metadata, splits, cfg.cache_limit_mb,
                                                                      size=network_size, low_side=start_side))


def prepare_outputs(cfg: config_lib.TrainConfig, placement: distribute.Placement) -> Outputs:
    # Only the chief writes into model_dir; other workers write their copies of logs and checkpoints to a temp dir.
    out_dir = cfg.model_dir if placement.is_chief else tempfile.mkdtemp(prefix="catsdogs-worker-")
    tf.io.gfile.makedirs(join(out_dir, "checkpoints"))
    return Outputs(out_dir=out_dir, backup_dir=join(cfg.model_dir, model_dir.BACKUP_DIR),
                   history=join(out_dir, model_dir.HISTORY_FILE), best_weights=join(out_dir, model_dir.BEST_WEIGHTS))
