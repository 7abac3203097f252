"""Train, evaluate and export a cats-vs-dogs classifier from a preprocessed TFRecord dataset.

`run()` is the list of steps: read the dataset's metadata.json -> choose the distribution strategy
(trainer/distribute.py) -> check <model_dir>/config.json -> plan the run (batch, learning rate, steps) -> find the
backup to resume from (trainer/backup.py) -> write config.json -> input pipelines (trainer/data.py) -> build and
compile the model (trainer/models.py, trainer/schedules.py) -> fit with early stopping, best checkpoint, TensorBoard,
history.csv and backups -> evaluate the best weights on the test split (metrics.json, report.png) -> export the
SavedModel, gate it against the current `latest` and publish it to <export_dir>/<version>, moving `latest` only when
blessed (trainer/promotion.py).

    python -m trainer.train --data_dir work/data --model_dir work/model            # or: catsdogs-train ...
    python -m trainer.train --data_dir work/data --model_dir work/seed --model seed_cnn --epochs 15

Fault tolerance (trainer/backup.py): a backup (weights, optimizer state, epoch) goes to <model_dir>/backup every
--backup_every_steps steps, at every epoch end and on SIGTERM (then the process exits with status 143 so a
Kubernetes Job retries it). Running the same command again resumes from the last backup; a different config in the
same model_dir is refused. A run that already finished (its metrics.json records the promotion decision) is not
repeated: it exits as it did.

Exit status: 0 success, 2 usage or config error, 3 damaged dataset, 4 model not blessed by the promotion gate (kept
under export/, `latest` unchanged), 5 lost a worker of a multi-worker run (restart
every worker to resume from the backup), 143 interrupted by SIGTERM (re-run to resume).

Cost, measured on the 2-core development CPU: the default resnet_lite (width 32, depth 2) at 128x128 trains ~200
images/s with the real input pipeline, ~90 s per epoch of pets-180's 18,368 training images, so the default 40
epochs take about an hour (`make train` stops at TIME_BUDGET=60 minutes either way). docs/TRAINING.md has the GPU and
transfer-learning schedules. Memory: the decoded dataset is cached in RAM when it fits --cache_limit_mb (train and
validation at 128x128: about 1 GB).
"""

import dataclasses
import importlib.util
import math
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from trainer import backup, data, distribute, evaluate, fine_tune, model_dir, models, promotion, provenance, schedules
from trainer import config as config_lib
from trainer.paths import join, write_json

EXIT_OK = 0
EXIT_USAGE = 2  # a bad flag, a missing dataset, another run's model_dir, an unusable backup
EXIT_DAMAGED_DATA = 3
EXIT_LOST_WORKER = distribute.EXIT_LOST_WORKER  # 5: a multi-worker peer is gone; restart all workers to resume
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what Kubernetes expects from a process it terminated


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run derives from its config, the dataset and the placement; recorded in config.json."""

    image_size: list  # the dataset's (h, w)
    network_size: list  # the (h, w) the network works at
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


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where this process writes: the chief into model_dir, other workers into a temp dir of their own."""

    out_dir: str
    backup_dir: str  # the chief's: every worker resumes from it
    history: str
    best_weights: str


def main(argv=None) -> int:
    cfg = config_lib.parse_args(argv)
    try:
        return run(cfg)
    except (data.DatasetMissing, model_dir.ConfigMismatch, backup.BackupUnusable, FileNotFoundError) as error:
        print(f"catsdogs-train: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except distribute.LostWorker as error:
        print(f"catsdogs-train: {error}", file=sys.stderr, flush=True)
        return EXIT_LOST_WORKER
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
    stop = backup.StopRequest(cfg.time_budget_minutes)
    stop.install()
    metadata = data.read_metadata(cfg.data_dir)
    placement = distribute.choose(cfg.mixed_precision)  # first: MultiWorkerMirroredStrategy must precede any TF work
    data.check_record_counts(cfg.data_dir)  # a missing, truncated or foreign shard stops the run here
    previous = model_dir.check_config(cfg.model_dir, cfg.to_dict())
    finished = promotion.recorded_exit_code(join(cfg.model_dir, model_dir.METRICS_FILE)) if previous else None
    if finished is not None:
        print(f"catsdogs-train: {cfg.model_dir} already holds a finished run with this config (its metrics.json "
              f"records the promotion decision); nothing to do, exiting {finished} as it did", flush=True)
        return finished
    plan = plan_run(cfg, metadata, placement)
    outputs = prepare_outputs(cfg, placement)
    resume_epoch = backup.backup_epoch(outputs.backup_dir)
    earlier_history = backup.keep_history_before(outputs.history, resume_epoch) if placement.is_chief else []
    if placement.is_chief:
        write_json(join(cfg.model_dir, model_dir.CONFIG_FILE),
                   resolved_config(cfg, plan, placement, metadata, previous, resume_epoch))
    announce(cfg, plan, placement, resume_epoch)

    keras.utils.set_random_seed(cfg.seed)
    train_data, validation_data = input_pipelines(cfg, plan, placement)
    model, freeze = build_model(cfg, plan, placement)
    monitor = "val_loss" if validation_data is not None else "loss"
    backups = backup.ResumableBackup(outputs.backup_dir, cfg.backup_every_steps, stop,
                                     write_dir=None if placement.is_chief else join(outputs.out_dir, "backup"))
    with distribute.watch_workers(placement, cfg.worker_timeout_minutes) as watch_callbacks:
        callbacks = watch_callbacks + make_callbacks(cfg, outputs, monitor, earlier_history, freeze, backups)
        try:
            trained = fit_model(model, cfg, plan, placement, train_data, validation_data, callbacks, stop)
        except backup.Interrupted as interruption:
            print(f"catsdogs-train: {interruption}; run the same command again to resume", file=sys.stderr,
                  flush=True)
            return EXIT_INTERRUPTED
        if not placement.is_chief:
            distribute.barrier(placement)
            shutil.rmtree(outputs.out_dir, ignore_errors=True)
            return EXIT_OK
        stopped_by = backups.stopped_by or ("early_stopping" if resume_epoch + trained.epochs < cfg.epochs
                                            else "epochs")
        metrics, labels, probabilities = evaluate_best(model, cfg, plan, metadata, outputs, monitor)
        metrics.update(training_facts(trained, plan, placement, stopped_by))
        write_reports(cfg, plan, outputs, metrics, labels, probabilities)
        outcome = export_and_promote(model, cfg, plan, metadata, metrics)
        if tf.io.gfile.exists(outputs.backup_dir):
            tf.io.gfile.rmtree(outputs.backup_dir)  # the run is complete: a restart must not resume it
        distribute.barrier(placement)
    summarize(cfg, metrics, trained.seconds, outputs, outcome.uri)
    return outcome.exit_code


def plan_run(cfg: config_lib.TrainConfig, metadata: dict, placement: distribute.Placement) -> Plan:
    image_size = [int(v) for v in metadata["image_size"]]
    train_count, validation_count = data.split_size(metadata, "train"), data.split_size(metadata, "validation")
    if train_count == 0:
        raise data.DatasetMissing(f"{cfg.data_dir} has no training examples (metadata counts: {metadata['counts']})")
    global_batch = cfg.batch_size * placement.num_replicas
    steps_per_epoch = max(1, math.ceil(train_count / global_batch))
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    network_size = cfg.model_input_size(image_size)
    return Plan(
        image_size=image_size, network_size=network_size, class_names=list(metadata["class_names"]),
        global_batch=global_batch, peak_rate=distribute.scaled_learning_rate(cfg.learning_rate, placement.num_replicas),
        train_count=train_count, validation_count=validation_count, steps_per_epoch=steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), total_steps=cfg.epochs * steps_per_epoch,
        head_epochs=cfg.head_only_epochs(),
        cache=data.should_cache(cfg.cache, metadata, ("train", "validation"), cfg.cache_limit_mb, size=network_size))


def prepare_outputs(cfg: config_lib.TrainConfig, placement: distribute.Placement) -> Outputs:
    # Only the chief writes into model_dir; other workers write their copies of logs and checkpoints to a temp dir.
    out_dir = cfg.model_dir if placement.is_chief else tempfile.mkdtemp(prefix="catsdogs-worker-")
    tf.io.gfile.makedirs(join(out_dir, "checkpoints"))
    return Outputs(out_dir=out_dir, backup_dir=join(cfg.model_dir, model_dir.BACKUP_DIR),
                   history=join(out_dir, model_dir.HISTORY_FILE), best_weights=join(out_dir, model_dir.BEST_WEIGHTS))


def resolved_config(cfg, plan: Plan, placement, metadata: dict, previous: dict | None, resume_epoch: int) -> dict:
    """config.json: the flags plus everything derived from them, the code version and the start times."""
    return {
        "config": cfg.to_dict(),
        "code_version": provenance.code_version(),
        "started_at": (previous or {}).get("started_at", provenance.utc_now()),
        "last_started_at": provenance.utc_now(),
        "placement": placement.describe(),
        "global_batch_size": plan.global_batch,
        "peak_learning_rate": plan.peak_rate,
        "learning_rate_rule": "learning_rate x replicas (per-replica rate, linear scaling)",
        "steps_per_epoch": plan.steps_per_epoch,
        "warmup_steps": plan.warmup_steps,
        "total_steps": plan.total_steps,
        "head_only_epochs": plan.head_epochs,
        "cache": plan.cache,
        "image_size": plan.image_size,
        "network_input_size": plan.network_size,
        "class_names": plan.class_names,
        "dataset_counts": metadata["counts"],
        "resumed_at_epoch": resume_epoch,
    }


def announce(cfg, plan: Plan, placement, resume_epoch: int) -> None:
    height, width = plan.network_size
    print(f"catsdogs-train: {cfg.model} at {height}x{width} on {plan.image_size[0]}x{plan.image_size[1]} "
          f"images, {placement.kind} strategy, "
          f"{placement.num_replicas} replica(s), global batch {plan.global_batch}, peak lr {plan.peak_rate:g}, "
          f"mixed precision {'on' if placement.mixed_precision else 'off'}, {plan.steps_per_epoch} steps/epoch, "
          f"cache {'on' if plan.cache else 'off'}", flush=True)
    if resume_epoch:
        print(f"catsdogs-train: resuming from backup at epoch {resume_epoch} (of {cfg.epochs})", flush=True)


def input_pipelines(cfg, plan: Plan, placement):
    """(training batches, validation batches or None)."""
    common = {"image_size": plan.image_size, "batch_size": plan.global_batch, "cache": plan.cache,
              "num_workers": placement.num_workers, "resize_to": plan.network_size}
    # Shards hold records in input order (one class folder after the other), so a small buffer would feed batches of
    # one class: when the split is cached in memory anyway, shuffle all of it.
    shuffle_buffer = max(cfg.shuffle_buffer, plan.train_count) if plan.cache else cfg.shuffle_buffer
    train_data = data.make_dataset(cfg.data_dir, "train", training=True, augment=cfg.augment,
                                   shuffle_buffer=shuffle_buffer, seed=cfg.seed, **common)
    if not plan.validation_count:
        return train_data, None
    return train_data, data.make_dataset(cfg.data_dir, "validation", training=False,
                                         num_examples=plan.validation_count, **common)


def build_model(cfg, plan: Plan, placement):
    """(compiled model, the fine-tuning callback or None), built inside the strategy's scope."""
    with placement.strategy.scope():
        model = models.build_model(cfg, plan.image_size)
        if plan.head_epochs:
            schedule = schedules.FineTuneSchedule(plan.peak_rate, plan.warmup_steps,
                                                  plan.head_epochs * plan.steps_per_epoch, plan.total_steps,
                                                  cfg.fine_tune_factor)
        else:
            schedule = schedules.learning_rate_schedule(plan.peak_rate, plan.warmup_steps, plan.total_steps)
        compile_model(model, cfg, schedule)
        freeze = fine_tune.prepare_fine_tuning(model, cfg, plan.head_epochs)
    return model, freeze


def compile_model(model, cfg: config_lib.TrainConfig, schedule) -> None:
    if models.uses_plain_adam(cfg):
        optimizer = keras.optimizers.Adam(schedule)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])


def make_callbacks(cfg, outputs: Outputs, monitor: str, earlier_history: list, freeze, backups) -> list:
    best_so_far = min((row[monitor] for row in earlier_history if monitor in row), default=None)
    callbacks = [
        keras.callbacks.CSVLogger(outputs.history, append=True),
        keras.callbacks.ModelCheckpoint(outputs.best_weights, monitor=monitor, save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        backups,  # last: an epoch's history row and checkpoint are written before its backup
    ]
    if importlib.util.find_spec("tensorboard"):  # tf.summary needs the tensorboard package; tensorflow-cpu lacks it
        callbacks.insert(-1, keras.callbacks.TensorBoard(join(outputs.out_dir, "logs"), update_freq="epoch",
                                                         profile_batch=0))
    else:
        print("catsdogs-train: the tensorboard package is not installed: no TensorBoard logs "
              "(pip install tensorboard to get them); history.csv and report.png still record the curves", flush=True)
    if cfg.early_stopping_patience:
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.early_stopping_patience))
    if freeze is not None:
        callbacks.insert(0, freeze)
    return callbacks


@dataclasses.dataclass(frozen=True)
class Trained:
    epochs: int  # epochs this process ran (after a resume, not counting the earlier ones)
    seconds: float


def fit_model(model, cfg, plan: Plan, placement, train_data, validation_data, callbacks, stop) -> Trained:
    """model.fit; raises backup.Interrupted when SIGTERM arrived (the backup is written by then)."""
    started = time.monotonic()
    with distribute.fit_scope(model, placement):
        fit = model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=plan.steps_per_epoch,
                        validation_data=validation_data, callbacks=callbacks, shuffle=False,
                        verbose=1 if sys.stdout.isatty() else 2)
    if stop.signal_name:  # arrived after the last step: the epoch-end backup already holds everything
        raise backup.Interrupted(f"{stop.signal_name} after training; backup at "
                                 f"{join(cfg.model_dir, model_dir.BACKUP_DIR)}")
    return Trained(epochs=len(fit.epoch), seconds=time.monotonic() - started)


def training_facts(trained: Trained, plan: Plan, placement, stopped_by: str) -> dict:
    """What metrics.json records about the training itself."""
    steps = trained.epochs * plan.steps_per_epoch
    return {
        "stopped_by": stopped_by,
        "train_seconds_this_run": round(trained.seconds, 1),
        # includes validation passes and the first step's graph tracing, so it is a lower bound on step rate
        "train_steps_per_second_this_run": round(steps / trained.seconds, 3) if steps else None,
        "global_batch_size": plan.global_batch,
        "num_replicas": placement.num_replicas,
    }


def evaluate_best(model, cfg, plan: Plan, metadata: dict, outputs: Outputs, monitor: str):
    """(metrics, labels, probabilities) of the best checkpoint on the test split (validation when there is none)."""
    if tf.io.gfile.exists(outputs.best_weights):
        model.load_weights(outputs.best_weights)
    split = "test" if data.split_size(metadata, "test") else "validation"
    batches = data.make_dataset(cfg.data_dir, split, training=False, image_size=plan.image_size,
                                batch_size=plan.global_batch)
    labels, probabilities = evaluate.predict(model, batches)
    metrics = evaluate.compute_metrics(labels, probabilities, plan.class_names)
    history = evaluate.read_history(outputs.history)
    metrics.update({
        "split": split,
        "model": cfg.model,
        "epochs_completed": int(history[-1]["epoch"]) + 1 if history else 0,
        "best_" + monitor: min((row[monitor] for row in history if monitor in row), default=None),
    })
    return metrics, labels, probabilities


def write_reports(cfg, plan: Plan, outputs: Outputs, metrics: dict, labels, probabilities) -> None:
    evaluate.write_metrics(join(cfg.model_dir, model_dir.METRICS_FILE), metrics)
    height, width = plan.network_size
    evaluate.write_report(join(cfg.model_dir, model_dir.REPORT_FILE), evaluate.read_history(outputs.history),
                          metrics, labels, probabilities, title=f"{cfg.model} at {height}x{width}: {cfg.model_dir}")


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


def export_and_promote(model, cfg, plan: Plan, metadata: dict, metrics: dict) -> promotion.Outcome:
    """Exports the model, then publishes it as `latest` only when the promotion gate blesses it; metrics.json records
    the decision (and the exit code a re-run of this finished run returns)."""
    fine_tune.unfreeze_for_export(model)
    outcome = promotion.promote(
        float32_copy(model, cfg, plan.image_size), export_root=cfg.export_dir or join(cfg.model_dir,
                                                                                      model_dir.EXPORT_DIR),
        data_dir=cfg.data_dir, split=metrics["split"], image_size=plan.image_size, class_names=plan.class_names,
        model_name=cfg.model, metrics=metrics, training_data=data.lineage(metadata),
        gate=promotion.Gate(cfg.min_accuracy, cfg.min_roc_auc, cfg.max_regression, cfg.force_publish))
    evaluate.write_metrics(join(cfg.model_dir, model_dir.METRICS_FILE), {**metrics, "promotion": outcome.record})
    return outcome


def summarize(cfg, metrics: dict, train_seconds: float, outputs: Outputs, published: str) -> None:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(f"catsdogs-train: done in {train_seconds / 60:.1f} min of training ({metrics['stopped_by']}); "
          f"{metrics['split']} accuracy {fmt(metrics['accuracy'])}, precision {fmt(metrics['precision'])}, "
          f"recall {fmt(metrics['recall'])}, ROC AUC {fmt(metrics['roc_auc'])}, log loss {fmt(metrics['log_loss'])} "
          f"on {metrics['examples']} images", flush=True)
    print(f"catsdogs-train: metrics {join(cfg.model_dir, model_dir.METRICS_FILE)}, report "
          f"{join(cfg.model_dir, model_dir.REPORT_FILE)}, history {outputs.history}, export {published}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
