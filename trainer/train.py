"""Train, evaluate and export a cats-vs-dogs classifier from a preprocessed TFRecord dataset.

Stages: read the dataset's metadata.json -> choose the distribution strategy (trainer/distribute.py) -> check or write
<model_dir>/config.json -> input pipelines (trainer/data.py) -> build the model (trainer/models.py) -> fit with
warm-up + cosine learning rate, early stopping, best checkpoint, TensorBoard, history.csv and fault-tolerant backups
-> evaluate the best weights on the test split (metrics.json, report.png) -> export the SavedModel, gate it against
the current `latest` and publish it to <export_dir>/<version>, moving `latest` only when blessed (trainer/promotion.py;
exit status 4 when not).

    python -m trainer.train --data_dir work/data --model_dir work/model            # or: catsdogs-train ...
    python -m trainer.train --data_dir work/data --model_dir work/seed --model seed_cnn --epochs 15

Fault tolerance: a backup (weights, optimizer state, epoch) goes to <model_dir>/backup every --backup_every_steps
steps, at every epoch end and on SIGTERM (then the process exits with status 143 so a Kubernetes Job retries it).
Running the same command again resumes from the last backup; a different config in the same model_dir is refused.
A run that already finished (metrics.json records its promotion decision) is not repeated: it exits as it did.

Cost, measured on the 2-core development CPU: the default resnet_lite (width 32, depth 2) at 128x128 trains ~200
images/s with the real input pipeline, ~90 s per epoch of pets-180's 18,368 training images, so the default 40
epochs take about an hour (`make train` stops at TIME_BUDGET=60 minutes either way). docs/TRAINING.md has the GPU and
transfer-learning schedules. Memory: the decoded dataset is cached in RAM when it fits --cache_limit_mb (train and
validation at 128x128: about 1 GB).
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import shutil
import signal
import sys
import tempfile
import time

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer import data, distribute, evaluate, models, promotion, provenance

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what Kubernetes expects from a process it terminated
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.png"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
BACKUP_WEIGHTS = "latest.weights.h5"  # in <model_dir>/backup, next to BACKUP_METADATA: Keras's names
BACKUP_METADATA = "training_metadata.json"


class Interrupted(Exception):
    """Raised from a callback to leave model.fit at once (after the backup is written), skipping validation."""


class ConfigMismatch(RuntimeError):
    pass


class StopRequest:
    """Set by the SIGTERM handler or when the time budget runs out; read by the backup callback after each step."""

    def __init__(self, time_budget_minutes: float | None):
        self.signal_name = None
        self.budget_seconds = None if time_budget_minutes is None else time_budget_minutes * 60.0
        self.training_started = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        print(f"catsdogs-train: received {self.signal_name}: writing a backup at the end of this step, then exiting",
              file=sys.stderr, flush=True)

    def budget_used(self) -> bool:
        if self.budget_seconds is None or self.training_started is None:
            return False
        return time.monotonic() - self.training_started >= self.budget_seconds


class BackupUnusable(RuntimeError):
    """The backup in <model_dir>/backup cannot be restored; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Backup:
    """One usable backup: a weights file (model and optimizer state) and the epoch it resumes at."""

    weights: str
    epoch: int
    which: str  # "latest", or "previous" when the latest one was unusable
    skipped: str = ""  # why the latest one was unusable


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights_file(model, path: str) -> None:
    """model.load_weights for any file name: Keras picks the format by the suffix and refuses the previous backup's
    `.weights.h5.bkp`, so such a file is loaded through a local copy named `*.weights.h5`."""
    if path.endswith(".weights.h5") and "://" not in path:
        model.load_weights(path)
        return
    local_dir = tempfile.mkdtemp(prefix="catsdogs-restore-")
    try:
        local = join(local_dir, BACKUP_WEIGHTS)
        tf.io.gfile.copy(path, local, overwrite=True)
        model.load_weights(local)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _check_backup(weights: str, metadata: str) -> tuple[int | None, str]:
    """(epoch, "") for a usable weights + metadata pair, else (None, why not)."""
    if not tf.io.gfile.exists(metadata):
        return None, f"{metadata} is missing"
    try:
        with tf.io.gfile.GFile(metadata) as handle:
            recorded = json.loads(handle.read())
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"{metadata} is not valid JSON ({error})"
    epoch = recorded.get("epoch") if isinstance(recorded, dict) else None
    if not isinstance(epoch, int) or epoch < 0:
        return None, f"{metadata} records no epoch"
    if not tf.io.gfile.exists(weights):
        return None, f"{weights} is missing"
    expected = recorded.get("weights_sha256")  # absent only in backups written before checksums were recorded
    if expected is not None and _sha256(weights) != expected:
        return None, f"{weights} does not match the sha256 recorded in {metadata}: it is truncated or corrupt"
    return epoch, ""


def choose_backup(backup_dir: str) -> Backup | None:
    """The backup to resume from: the latest, else the previous one (Keras keeps both: double_checkpoint).

    None when no backup was ever completed (its metadata file is written last, so a run killed during its first
    backup has none). Raises BackupUnusable when backups were written but neither pair is intact: starting at
    epoch 0 then would silently throw the run away, and resuming from a corrupt file would train on garbage.
    """
    latest = (join(backup_dir, BACKUP_WEIGHTS), join(backup_dir, BACKUP_METADATA))
    previous = (latest[0] + ".bkp", latest[1] + ".bkp")
    if not any(tf.io.gfile.exists(metadata) for metadata in (latest[1], previous[1])):
        return None
    problems = []
    for which, (weights, metadata) in (("latest", latest), ("previous", previous)):
        epoch, problem = _check_backup(weights, metadata)
        if epoch is not None:
            return Backup(weights, epoch, which, skipped="; ".join(problems))
        problems.append(problem)
    raise BackupUnusable(
        f"the backup in {backup_dir} cannot be restored (latest: {problems[0]}; previous: {problems[1]}). Not "
        f"starting over silently: put a good copy of the backup there to resume, or delete {backup_dir} to train "
        f"this model_dir again from epoch 0")


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """keras BackupAndRestore that also backs up at every epoch end and before leaving on SIGTERM, and verifies
    what it restores.

    Restores the weights and optimizer state of the newest intact backup (`choose_backup`: the sha256 of the
    weights file is recorded in the metadata written after it), then Keras replays the interrupted epoch from its
    start. Every worker of a multi-worker run restores from the chief's backup; only the chief writes there.
    Relies on BackupAndRestore's `_save_model` hook and path attributes (keras 3.15, pinned in setup.py).
    """

    def __init__(self, backup_dir: str, save_freq: int, stop: StopRequest, write_dir: str | None = None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True, delete_checkpoint=False)
        self.stop = stop
        self.write_dir = write_dir
        self.stopped_by = None
        self._latest_is_intact = False  # only an intact latest pair becomes the previous one at the next save

    def on_train_begin(self, logs=None):
        # Not super(): Keras loads the latest backup unverified, and on a missing weights file or metadata file
        # quietly resumes with fresh weights, or from epoch 0.
        backup = choose_backup(self.backup_dir)
        if backup is not None:
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)  # its state is in the weights file
            load_weights_file(self.model, backup.weights)
            self.model._initial_epoch = backup.epoch
            self._latest_is_intact = backup.which == "latest"
        if self.write_dir:
            # Non-chief workers of a multi-worker run still save (saving can create variables, which under
            # MultiWorkerMirroredStrategy is a collective every worker must join) but into their own temp dir.
            self.backup_dir = self.write_dir
            self._weights_path = join(self.write_dir, BACKUP_WEIGHTS)
            self._training_metadata_path = join(self.write_dir, BACKUP_METADATA)
            self._prev_weights_path = self._weights_path + ".bkp"
            self._prev_training_metadata_path = self._training_metadata_path + ".bkp"
            self._latest_is_intact = False
        self.stop.training_started = time.monotonic()

    def _save_model(self):
        """Keras's double checkpoint, plus the weights' sha256 in the metadata (written last); a latest pair that
        is not known to be intact is never copied over the previous one."""
        tf.io.gfile.makedirs(self.backup_dir)
        if self._latest_is_intact:
            tf.io.gfile.copy(self._weights_path, self._prev_weights_path, overwrite=True)
            tf.io.gfile.copy(self._training_metadata_path, self._prev_training_metadata_path, overwrite=True)
        local_dir = tempfile.mkdtemp(prefix="catsdogs-backup-")
        try:  # saved locally, hashed, then copied: what Keras itself does for a remote path
            local = join(local_dir, BACKUP_WEIGHTS)
            self.model.save_weights(local)
            checksum = _sha256(local)
            tf.io.gfile.copy(local, self._weights_path, overwrite=True)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
        with tf.io.gfile.GFile(self._training_metadata_path, "w") as handle:
            handle.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                     "weights_sha256": checksum}))
        self._latest_is_intact = True

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.stop.signal_name:
            self._save_model()
            raise Interrupted(f"stopped by {self.stop.signal_name} at epoch {self._current_epoch} step {batch + 1}; "
                              f"backup written to {self.backup_dir}")
        if self.stop.budget_used() and not self.model.stop_training:
            self.stopped_by = "time_budget"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._save_model()


def join(*parts: str) -> str:
    return "/".join(part.rstrip("/") for part in parts)


def backup_epoch(backup_dir: str) -> int:
    """The epoch the backup in backup_dir resumes at (0 when there is none), saying so when it falls back to the
    previous backup. Raises BackupUnusable (see choose_backup)."""
    backup = choose_backup(backup_dir)
    if backup is None:
        return 0
    if backup.which == "previous":
        print(f"catsdogs-train: the latest backup is unusable ({backup.skipped}); resuming from the previous backup, "
              f"at epoch {backup.epoch}", file=sys.stderr, flush=True)
    return backup.epoch


def keep_history_before(path: str, epoch: int) -> list[dict]:
    """Drops history.csv rows of epochs that will be replayed (>= epoch), so each epoch appears once."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        lines = handle.read().splitlines()
    if not lines:
        return []
    header, kept = lines[0], [lines[0]]
    column = header.split(",").index("epoch") if "epoch" in header.split(",") else 0
    for line in lines[1:]:
        try:
            if int(float(line.split(",")[column])) < epoch:
                kept.append(line)
        except (ValueError, IndexError):
            continue
    if epoch == 0:
        tf.io.gfile.remove(path)
        return []
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("\n".join(kept) + "\n")
    return evaluate.read_history(path)


def check_config(model_dir: str, cfg: config_lib.TrainConfig) -> dict | None:
    """The previous run's config.json, or None; refuses a model_dir that holds a run with a different config."""
    path = join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        previous = json.load(handle)
    before, now = previous.get("config", {}), cfg.to_dict()
    changed = {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key)}
    if changed:
        details = ", ".join(f"--{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ConfigMismatch(f"{model_dir} holds a run with a different config ({details}). Re-run with the same "
                             f"flags to resume it, or use a new --model_dir (or delete {model_dir}) to start over.")
    return previous


def write_json(path: str, content: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(content, indent=2, sort_keys=True) + "\n")


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0 to peak over warmup_steps, then cosine decay to 0 at total_steps."""
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(total_steps - warmup_steps, 1),
                                                  warmup_target=peak, warmup_steps=warmup_steps)


@keras.saving.register_keras_serializable(package="catsdogs")
class FineTuneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The fine-tuning schedule of a pretrained backbone: while only the new head trains (the first head_steps),
    linear warm-up to peak then peak; then the whole network from peak x factor, cosine-decayed to 0 at total_steps."""

    def __init__(self, peak: float, warmup_steps: int, head_steps: int, total_steps: int, factor: float):
        self.peak, self.warmup_steps, self.head_steps = float(peak), int(warmup_steps), int(head_steps)
        self.total_steps, self.factor = int(total_steps), float(factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        head = self.peak * ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        progress = ops.clip((step - self.head_steps) / max(self.total_steps - self.head_steps, 1), 0.0, 1.0)
        whole = self.peak * self.factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.head_steps, head, whole)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "head_steps": self.head_steps,
                "total_steps": self.total_steps, "factor": self.factor}


class FreezeBackbone(keras.callbacks.Callback):
    """The fine-tuning schedule's switch: the backbone frozen for the first `epochs` epochs, trainable after (its
    BatchNormalization layers stay frozen when pretrained). Also right after a resume, whatever epoch it starts at.
    The optimizer was built over every variable fine-tuning trains, so it needs no rebuilding; the train step is
    retraced, since Keras collects the trainable variables when it traces."""

    def __init__(self, backbone, epochs: int, freeze_batch_norm: bool):
        super().__init__()
        self.backbone, self.epochs, self.freeze_batch_norm = backbone, epochs, freeze_batch_norm
        self.trainable = False  # how run() leaves the backbone before fit

    def on_epoch_begin(self, epoch, logs=None):
        trainable = epoch >= self.epochs
        if trainable != self.trainable:
            models.set_backbone_trainable(self.backbone, trainable, self.freeze_batch_norm)
            self.model.make_train_function(force=True)
            self.trainable = trainable
            print(f"catsdogs-train: epoch {epoch + 1}: backbone {'trainable' if trainable else 'frozen'}",
                  flush=True)


def prepare_fine_tuning(model, cfg: config_lib.TrainConfig, head_epochs: int) -> FreezeBackbone | None:
    """For a keras.applications model (after compile): builds the optimizer over every variable fine-tuning will
    train, so unfreezing later needs no new optimizer state; freezes the pretrained backbone's BatchNormalization
    layers; freezes the backbone for the head-only epochs and returns the callback that unfreezes it. None when
    there is nothing to switch (no backbone, or no head-only epochs)."""
    backbone = models.find_backbone(model)
    if backbone is None:
        return None
    pretrained = bool(cfg.weights)
    models.set_backbone_trainable(backbone, True, freeze_batch_norm=pretrained)
    model.optimizer.build(model.trainable_variables)
    if not head_epochs:
        return None
    models.set_backbone_trainable(backbone, False, freeze_batch_norm=pretrained)
    return FreezeBackbone(backbone, head_epochs, freeze_batch_norm=pretrained)


def compile_model(model, cfg: config_lib.TrainConfig, schedule) -> None:
    if models.uses_plain_adam(cfg):
        optimizer = keras.optimizers.Adam(schedule)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])


def float32_copy(model, cfg: config_lib.TrainConfig, image_size):
    """The trained model rebuilt in float32, outside any strategy: what gets exported and served."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = models.build_model(dataclasses.replace(cfg, weights=None), image_size)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def barrier(placement: distribute.Placement) -> None:
    """Multi-worker only: a tiny all-reduce, so workers leave together once the chief has exported."""
    if placement.kind == "multi_worker":
        strategy = placement.strategy
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


EXIT_DAMAGED_DATA = 3


def main(argv=None) -> int:
    cfg = config_lib.parse_args(argv)
    try:
        return run(cfg)
    except (data.DatasetMissing, ConfigMismatch, BackupUnusable, FileNotFoundError) as error:
        print(f"catsdogs-train: {error}", file=sys.stderr, flush=True)
        return 2
    except tf.errors.DataLossError as error:
        # A record failed its CRC: stop rather than train on damaged data (records are never skipped), and name
        # the files, which TensorFlow's message does not.
        damaged = data.corrupt_shards(cfg.data_dir)
        where = "; ".join(f"{path}: {message}" for path, message in sorted(damaged.items())) or error.message
        print(f"catsdogs-train: the dataset in {cfg.data_dir} is damaged (TFRecord CRC mismatch: {where}). Training "
              f"stopped instead of learning from wrong data; re-run preprocessing into a new DATASET (or restore "
              f"the damaged shards from a copy), then train again.", file=sys.stderr, flush=True)
        return EXIT_DAMAGED_DATA


def run(cfg: config_lib.TrainConfig) -> int:
    stop = StopRequest(cfg.time_budget_minutes)
    stop.install()
    metadata = data.read_metadata(cfg.data_dir)
    placement = distribute.choose(cfg.mixed_precision)
    previous = check_config(cfg.model_dir, cfg)
    finished = promotion.recorded_exit_code(join(cfg.model_dir, METRICS_FILE)) if previous is not None else None
    if finished is not None:
        print(f"catsdogs-train: {cfg.model_dir} already holds a finished run with this config (its metrics.json "
              f"records the promotion decision); nothing to do, exiting {finished} as it did", flush=True)
        return finished

    image_size = [int(v) for v in metadata["image_size"]]
    class_names = list(metadata["class_names"])
    global_batch = cfg.batch_size * placement.num_replicas
    peak_rate = distribute.scaled_learning_rate(cfg.learning_rate, placement.num_replicas)
    train_count, validation_count = data.split_size(metadata, "train"), data.split_size(metadata, "validation")
    if train_count == 0:
        raise data.DatasetMissing(f"{cfg.data_dir} has no training examples (metadata counts: {metadata['counts']})")
    steps_per_epoch = max(1, math.ceil(train_count / global_batch))
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    head_epochs = cfg.head_only_epochs()
    network_size = cfg.model_input_size(image_size)
    cache = data.should_cache(cfg.cache, metadata, ("train", "validation"), cfg.cache_limit_mb, size=network_size)

    # Only the chief writes into model_dir; other workers write their copies of logs and checkpoints to a temp dir.
    out_dir = cfg.model_dir if placement.is_chief else tempfile.mkdtemp(prefix="catsdogs-worker-")
    backup_dir = join(cfg.model_dir, "backup")  # every worker reads the chief's backup when resuming
    tf.io.gfile.makedirs(join(out_dir, "checkpoints"))
    resume_epoch = backup_epoch(backup_dir)
    history_path = join(out_dir, HISTORY_FILE)
    earlier_history = keep_history_before(history_path, resume_epoch) if placement.is_chief else []
    resolved = {
        "config": cfg.to_dict(),
        "code_version": provenance.code_version(),
        "started_at": (previous or {}).get("started_at", provenance.utc_now()),
        "last_started_at": provenance.utc_now(),
        "placement": placement.describe(),
        "global_batch_size": global_batch,
        "peak_learning_rate": peak_rate,
        "learning_rate_rule": "learning_rate x replicas (per-replica rate, linear scaling)",
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup_steps,
        "total_steps": total_steps,
        "head_only_epochs": head_epochs,
        "cache": cache,
        "image_size": image_size,
        "network_input_size": network_size,
        "class_names": class_names,
        "dataset_counts": metadata["counts"],
        "resumed_at_epoch": resume_epoch,
    }
    if placement.is_chief:
        write_json(join(cfg.model_dir, CONFIG_FILE), resolved)
    print(f"catsdogs-train: {cfg.model} at {network_size[0]}x{network_size[1]} on {image_size[0]}x{image_size[1]} "
          f"images, {placement.kind} strategy, "
          f"{placement.num_replicas} replica(s), global batch {global_batch}, peak lr {peak_rate:g}, "
          f"mixed precision {'on' if placement.mixed_precision else 'off'}, {steps_per_epoch} steps/epoch, "
          f"cache {'on' if cache else 'off'}", flush=True)
    if resume_epoch:
        print(f"catsdogs-train: resuming from backup at epoch {resume_epoch} (of {cfg.epochs})", flush=True)

    keras.utils.set_random_seed(cfg.seed)
    dataset_args = {"image_size": image_size, "batch_size": global_batch, "cache": cache,
                    "num_workers": placement.num_workers, "resize_to": network_size}
    # Shards hold records in input order (one class folder after the other), so a small buffer would feed batches of
    # one class: when the split is cached in memory anyway, shuffle all of it.
    shuffle_buffer = max(cfg.shuffle_buffer, train_count) if cache else cfg.shuffle_buffer
    train_data = data.make_dataset(cfg.data_dir, "train", training=True, augment=cfg.augment,
                                   shuffle_buffer=shuffle_buffer, seed=cfg.seed, **dataset_args)
    validation_data = (data.make_dataset(cfg.data_dir, "validation", training=False, num_examples=validation_count,
                                         **dataset_args)
                       if validation_count else None)
    with placement.strategy.scope():
        model = models.build_model(cfg, image_size)
        if head_epochs:
            schedule = FineTuneSchedule(peak_rate, warmup_steps, head_epochs * steps_per_epoch, total_steps,
                                        cfg.fine_tune_factor)
        else:
            schedule = learning_rate_schedule(peak_rate, warmup_steps, total_steps)
        compile_model(model, cfg, schedule)
        freeze = prepare_fine_tuning(model, cfg, head_epochs)

    monitor = "val_loss" if validation_data is not None else "loss"
    best_so_far = min((row[monitor] for row in earlier_history if monitor in row), default=None)
    backup = ResumableBackup(backup_dir, cfg.backup_every_steps, stop,
                             write_dir=None if placement.is_chief else join(out_dir, "backup"))
    callbacks = [
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.ModelCheckpoint(join(out_dir, BEST_WEIGHTS), monitor=monitor, save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        backup,  # last: an epoch's history row and checkpoint are written before its backup
    ]
    if importlib.util.find_spec("tensorboard"):  # tf.summary needs the tensorboard package; tensorflow-cpu lacks it
        callbacks.insert(-1, keras.callbacks.TensorBoard(join(out_dir, "logs"), update_freq="epoch", profile_batch=0))
    else:
        print("catsdogs-train: the tensorboard package is not installed: no TensorBoard logs "
              "(pip install tensorboard to get them); history.csv and report.png still record the curves", flush=True)
    if cfg.early_stopping_patience:
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.early_stopping_patience))
    if freeze is not None:
        callbacks.insert(0, freeze)

    fit_scope = contextlib.nullcontext()
    if placement.kind == "multi_worker":
        # Keras 3.15 builds the model before fit by all-reducing a sample batch, which fails under
        # MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)"). Without a recorded strategy
        # Keras defers the build to the first traced step instead; fit runs inside the scope, so it still
        # distributes with this strategy.
        model._distribute_strategy = None
        fit_scope = placement.strategy.scope()
        # It then all-reduces each step's logs with reduce("MEAN", axis=0), which rejects scalars: give it vectors.
        train_step, test_step = model.train_step, model.test_step
        model.train_step = lambda batch: {k: tf.reshape(v, [1]) for k, v in train_step(batch).items()}
        model.test_step = lambda batch: {k: tf.reshape(v, [1]) for k, v in test_step(batch).items()}
    started = time.monotonic()
    try:
        with fit_scope:
            fit = model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                            validation_data=validation_data, callbacks=callbacks, shuffle=False,
                            verbose=1 if sys.stdout.isatty() else 2)
    except Interrupted as interruption:
        print(f"catsdogs-train: {interruption}; run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    train_seconds = time.monotonic() - started
    if stop.signal_name:  # arrived after the last step: the epoch-end backup already holds everything
        print(f"catsdogs-train: {stop.signal_name} after training; backup at {backup_dir}; exiting", file=sys.stderr)
        return EXIT_INTERRUPTED
    epochs_run = len(fit.epoch)
    steps_run = epochs_run * steps_per_epoch
    stopped_by = backup.stopped_by or ("early_stopping" if resume_epoch + epochs_run < cfg.epochs else "epochs")

    if not placement.is_chief:
        barrier(placement)
        shutil.rmtree(out_dir, ignore_errors=True)
        return 0

    best_path = join(out_dir, BEST_WEIGHTS)
    if tf.io.gfile.exists(best_path):
        model.load_weights(best_path)
    test_split = "test" if data.split_size(metadata, "test") else "validation"
    test_data = data.make_dataset(cfg.data_dir, test_split, training=False, image_size=image_size,
                                  batch_size=global_batch)
    labels, probabilities = evaluate.predict(model, test_data)
    metrics = evaluate.compute_metrics(labels, probabilities, class_names)
    history = evaluate.read_history(history_path)
    metrics.update({
        "split": test_split,
        "model": cfg.model,
        "epochs_completed": int(history[-1]["epoch"]) + 1 if history else 0,
        "stopped_by": stopped_by,
        "best_" + monitor: min((row[monitor] for row in history if monitor in row), default=None),
        "train_seconds_this_run": round(train_seconds, 1),
        # includes validation passes and the first step's graph tracing, so it is a lower bound on step rate
        "train_steps_per_second_this_run": round(steps_run / train_seconds, 3) if steps_run else None,
        "global_batch_size": global_batch,
        "num_replicas": placement.num_replicas,
    })
    evaluate.write_metrics(join(cfg.model_dir, METRICS_FILE), metrics)
    evaluate.write_report(join(cfg.model_dir, REPORT_FILE), history, metrics, labels, probabilities,
                          title=f"{cfg.model} at {network_size[0]}x{network_size[1]}: {cfg.model_dir}")
    backbone = models.find_backbone(model)
    if backbone is not None:  # get_weights() lists trainable variables first: match the fresh copy's flags
        models.set_backbone_trainable(backbone, True, freeze_batch_norm=False)
    outcome = promotion.promote(
        float32_copy(model, cfg, image_size), export_root=cfg.export_dir or join(cfg.model_dir, "export"),
        data_dir=cfg.data_dir, split=test_split, image_size=image_size, class_names=class_names, model_name=cfg.model,
        metrics=metrics, training_data=metadata,
        gate=promotion.Gate(cfg.min_accuracy, cfg.min_roc_auc, cfg.max_regression, cfg.force_publish))
    evaluate.write_metrics(join(cfg.model_dir, METRICS_FILE), {**metrics, "promotion": outcome.record})
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)  # the run is complete: a restart must not resume it
    barrier(placement)

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(f"catsdogs-train: done in {train_seconds / 60:.1f} min of training ({stopped_by}); "
          f"{test_split} accuracy {fmt(metrics['accuracy'])}, precision {fmt(metrics['precision'])}, "
          f"recall {fmt(metrics['recall'])}, ROC AUC {fmt(metrics['roc_auc'])}, log loss {fmt(metrics['log_loss'])} "
          f"on {metrics['examples']} images", flush=True)
    print(f"catsdogs-train: metrics {join(cfg.model_dir, METRICS_FILE)}, report {join(cfg.model_dir, REPORT_FILE)}, "
          f"history {history_path}, export {outcome.uri}", flush=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
