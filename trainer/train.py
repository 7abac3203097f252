"""Train, evaluate and export a cats-vs-dogs classifier from a preprocessed TFRecord dataset.

`run()` is the list of steps: read the dataset's metadata.json -> choose the distribution strategy
(trainer/distribute.py) -> check <model_dir>/config.json -> plan the run (trainer/plan.py: batch, learning rate,
steps) -> find the backup to resume from (trainer/backup.py) -> write config.json -> input pipelines
(trainer/data.py) -> build and compile the model (trainer/models.py, learning rate from trainer/schedules.py) -> fit
with the time budget (or early stopping), best checkpoint, TensorBoard, history.csv and backups -> on the chief:
choose the weights, evaluate them on the test split as served, write metrics.json, report.png and mistakes.png,
export, gate it against the current `latest` and publish it to <export_dir>/<version>, moving `latest` only when
blessed (trainer/final_model.py, trainer/promotion.py).

    python -m trainer.train --data_dir work/data --model_dir work/model            # or: catsdogs-train ...
    python -m trainer.train --data_dir work/data --model_dir work/seed --model seed_cnn --epochs 15

Fault tolerance (trainer/backup.py): a backup (weights, optimizer state, epoch) goes to <model_dir>/backup every
--backup_every_steps steps, at every epoch end and on SIGTERM (then the process exits with status 143 so a
Kubernetes Job retries it). Running the same command again resumes from the last backup; a different config in the
same model_dir is refused. A run that already finished (its metrics.json records the promotion decision) is not
repeated: it exits as it did.

Exit status: 0 success, 2 usage or config error, 3 damaged dataset, 4 model not blessed by the promotion gate (kept
under export/, `latest` unchanged), 5 lost a worker of a multi-worker run (restart every worker to resume from the
backup), 143 interrupted by SIGTERM (re-run to resume).

Cost, measured on the 2-core development CPU: resnet_lite (width 32) at 128x128 trains ~300 images/s at the default
depth 1 (~200 at depth 2) with the real input pipeline, ~60 s per pets-180 epoch (~90 s at depth 2) on a quiet day; a
step's cost follows the pixels (0.56x that at 96x96, 1.56x at 160x160). `make train` stops at TIME_BUDGET=60 minutes
(the default 60 epochs are a cap the hour does not reach on 2 cores). docs/TRAINING.md has the GPU and
transfer-learning schedules. Memory: the decoded dataset is cached in RAM when it fits --cache_limit_mb (train and
validation at 160x160: about 1.6 GB).
"""

import dataclasses
import importlib.util
import json
import shutil
import sys
import time

import keras
import tensorflow as tf

from trainer import (
    backup,
    credentials,
    data,
    distribute,
    final_model,
    fine_tune,
    logger,
    model_dir,
    models,
    promotion,
    provenance,
    schedules,
)
from trainer import config as config_lib
from trainer import plan as plans
from trainer.plan import Outputs, Plan
from trainer.storage import join, write_json

log = logger.get()

EXIT_OK = 0
EXIT_USAGE = 2  # a bad flag, a missing dataset, another run's model_dir, an unusable backup
EXIT_DAMAGED_DATA = 3
EXIT_LOST_WORKER = distribute.EXIT_LOST_WORKER  # 5: a multi-worker peer is gone; restart all workers to resume
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what Kubernetes expects from a process it terminated


def main(argv=None) -> int:
    cfg = config_lib.parse_args(argv)
    logger.use_format(cfg.log_format)
    policy = keras.mixed_precision.global_policy()  # distribute.choose sets the process's; main gives it back
    try:
        credentials.check_reachable([cfg.data_dir, cfg.model_dir, cfg.export_dir, cfg.weights])
        return check_only(cfg) if cfg.check_only else run(cfg)
    except credentials.Unreachable as error:
        log.error(str(error))
        return EXIT_USAGE
    except (data.DatasetMissing, model_dir.ConfigMismatch, backup.BackupUnusable, FileNotFoundError) as error:
        log.error(str(error))
        return EXIT_USAGE
    except distribute.LostWorker as error:
        log.error(str(error))
        return EXIT_LOST_WORKER
    except tf.errors.DataLossError as error:
        # A record failed its CRC: stop rather than train on damaged data (records are never skipped), and name
        # the files, which TensorFlow's message does not.
        damaged = data.corrupt_shards(cfg.data_dir)
        where = "; ".join(f"{path}: {message}" for path, message in sorted(damaged.items())) or error.message
        log.error(f"the dataset in {cfg.data_dir} is damaged (TFRecord CRC mismatch: {where}). Training stopped "
                  f"instead of learning from wrong data; re-run preprocessing into a new DATASET (or restore the "
                  f"damaged shards from a copy), then train again.")
        return EXIT_DAMAGED_DATA
    finally:
        keras.mixed_precision.set_global_policy(policy)


def check_only(cfg: config_lib.TrainConfig) -> int:
    """--check_only: what a run would start from, as JSON on stdout; nothing is written, nothing trained. The errors
    a run would stop with (missing or damaged dataset, another run's model_dir) propagate to main's exit codes."""
    metadata = data.read_metadata(cfg.data_dir)
    data.check_record_counts(cfg.data_dir)
    previous = model_dir.check_config(cfg.model_dir, cfg.to_dict())
    report = {
        "ok": True,
        "data_dir": cfg.data_dir,
        "dataset_version": metadata.get("version"),
        "dataset_counts": metadata.get("counts"),
        "records_counted": True,
        "model_dir": cfg.model_dir,
        "model_dir_state": "resumes the run it holds (same config)" if previous else "new run",
        "export_dir": cfg.export_dir or join(cfg.model_dir, "export"),
    }
    print(json.dumps(report, indent=2))
    log.info(f"check passed: {cfg.data_dir} ({metadata.get('counts')}) and {cfg.model_dir} are usable; nothing was "
             f"written")
    return EXIT_OK


def run(cfg: config_lib.TrainConfig) -> int:
    stop = backup.StopRequest()
    stop.install()
    metadata = data.read_metadata(cfg.data_dir)
    placement = distribute.choose(cfg.mixed_precision)  # first: MultiWorkerMirroredStrategy must precede any TF work
    data.check_record_counts(cfg.data_dir)  # a missing, truncated or foreign shard stops the run here
    previous = model_dir.check_config(cfg.model_dir, cfg.to_dict())
    finished = promotion.recorded_exit_code(join(cfg.model_dir, model_dir.METRICS_FILE)) if previous else None
    if finished is not None:
        log.info(f"{cfg.model_dir} already holds a finished run with this config (its metrics.json records the "
                 f"promotion decision); nothing to do, exiting {finished} as it did")
        return finished
    plan = plans.plan_run(cfg, metadata, placement)
    outputs = plans.prepare_outputs(cfg, placement)
    resume_epoch = backup.backup_epoch(outputs.backup_dir)
    earlier_history = backup.keep_history_before(outputs.history, resume_epoch) if placement.is_chief else []
    if placement.is_chief:
        write_json(join(cfg.model_dir, model_dir.CONFIG_FILE),
                   resolved_config(cfg, plan, placement, metadata, previous, resume_epoch))
    announce(cfg, plan, placement, resume_epoch)

    keras.utils.set_random_seed(cfg.seed)
    side = training_side(plan)
    train_data, validation_data = input_pipelines(cfg, plan, placement, side)
    model, freeze, progress = build_model(cfg, plan, placement)
    monitor = "val_loss" if validation_data is not None else "loss"
    clock = schedules.BudgetClock(cfg.time_budget_minutes)
    budget = (schedules.TimeBudget(clock, progress, plan.total_steps, agree=distribute.agreement(placement))
              if cfg.time_budget_minutes else None)
    resize = progressive_resize(plan, side, progress if budget is not None else None)
    backups = backup.ResumableBackup(outputs.backup_dir, cfg.backup_every_steps, stop, clock=clock,
                                     write_dir=None if placement.is_chief else join(outputs.out_dir, "backup"))
    with distribute.watch_workers(placement, cfg.worker_timeout_minutes) as watch_callbacks:
        callbacks = watch_callbacks + make_callbacks(cfg, outputs, monitor, earlier_history, freeze, budget, backups,
                                                     resize)
        try:
            trained = fit_model(model, cfg, plan, placement, train_data, validation_data, callbacks, stop)
        except backup.Interrupted as interruption:
            log.warning(f"{interruption}; run the same command again to resume")
            return EXIT_INTERRUPTED
        if not placement.is_chief:
            distribute.barrier(placement)
            shutil.rmtree(outputs.out_dir, ignore_errors=True)
            return EXIT_OK
        stopped_by = ("time_budget" if budget is not None and budget.stopped else
                      "early_stopping" if resume_epoch + trained.epochs < cfg.epochs else "epochs")
        chosen = final_model.choose_weights(model, cfg, plan, outputs, validation_data)
        serving = final_model.float32_copy(model, cfg, plan.image_size)
        metrics, labels, probabilities = final_model.evaluate_on_test(serving, cfg, plan, metadata, outputs, monitor)
        metrics.update(chosen)
        metrics.update(final_model.check_eval_side(model, serving, cfg, plan, validation_data))
        metrics.update(training_facts(trained, plan, placement, stopped_by, resize))
        final_model.write_reports(cfg, plan, outputs, metrics, labels, probabilities)
        outcome = final_model.export_and_promote(serving, cfg, plan, metadata, metrics)
        if tf.io.gfile.exists(outputs.backup_dir):
            tf.io.gfile.rmtree(outputs.backup_dir)  # the run is complete: a restart must not resume it
        distribute.barrier(placement)
    summarize(cfg, metrics, trained.seconds, outputs, outcome.uri)
    return outcome.exit_code


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
        "cache_start_side": plan.cache_start_side,
        "image_size": plan.image_size,
        "network_input_size": plan.network_size,
        "progressive_start_side": plan.start_side,
        "class_names": plan.class_names,
        "dataset_counts": metadata["counts"],
        "resumed_at_epoch": resume_epoch,
    }


def announce(cfg, plan: Plan, placement, resume_epoch: int) -> None:
    height, width = plan.network_size
    log.info(f"{cfg.model} at {height}x{width} on {plan.image_size[0]}x{plan.image_size[1]} images, "
             f"{placement.kind} strategy, {placement.num_replicas} replica(s), global batch {plan.global_batch}, "
             f"peak lr {plan.peak_rate:g}, precision {placement.precision}, "
             f"{plan.steps_per_epoch} steps/epoch, cache {'on' if plan.cache else 'off'}"
             + (f" (and at {plan.start_side}x{plan.start_side})" if plan.cache_start_side else ""))
    log.info(f"training on {', '.join(placement.devices)}"
             + (f" (worker {placement.task_id} of {placement.num_workers})" if placement.multi_worker else ""))
    if cfg.time_budget_minutes:
        log.info(f"time budget {cfg.time_budget_minutes:g} min: the learning rate decays to 0 when it is used "
                 f"(or after {cfg.epochs} epochs); early stopping off")
    if resume_epoch:
        log.info(f"resuming from backup at epoch {resume_epoch} (of {cfg.epochs})")


def training_side(plan: Plan):
    """With progressive resizing (plan.start_side: --progressive_resize_from, on by default for resnet_lite): the int32
    variable holding the side the training batches are resized to (the training pipeline reads it per batch;
    ProgressiveResize sets it), else None."""
    if plan.start_side is None:
        return None
    with tf.device("/cpu:0"):  # read by the input pipeline, on the host
        return tf.Variable(schedules.progressive_side(0.0, plan.start_side, plan.network_size[0]), dtype=tf.int32,
                           trainable=False)


def progressive_resize(plan: Plan, side, budget_progress=None):
    """The callback that sets `side` before every step from the time budget's progress (`budget_progress`, the
    variable TimeBudget sets) or, without a budget, from the fraction of --epochs' steps done; None without
    progressive resizing."""
    if side is None:
        return None
    low, high = plan.start_side, plan.network_size[0]
    log.info(f"progressive resizing: training at {low}x{low} until {schedules.RAMP_START:.0%} of the run, growing to "
             f"{high}x{high} by {schedules.RAMP_END:.0%}")
    return schedules.ProgressiveResize(side, low, high, plan.total_steps, progress=budget_progress)


def input_pipelines(cfg, plan: Plan, placement, side=None):
    """(training batches, validation batches or None); with progressive resizing, the training batches are resized
    to the side the variable `side` holds."""
    common = {"image_size": plan.image_size, "batch_size": plan.global_batch, "cache": plan.cache,
              "num_workers": placement.num_workers, "resize_to": plan.network_size}
    # Shards hold records in input order (one class folder after the other), so a small buffer would feed batches of
    # one class: when the split is cached in memory anyway, shuffle all of it.
    shuffle_buffer = max(cfg.shuffle_buffer, plan.train_count) if plan.cache else cfg.shuffle_buffer
    train_data = data.make_dataset(cfg.data_dir, "train", training=True, augment=cfg.augment,
                                   augment_strength=cfg.augment_strength,
                                   shuffle_buffer=shuffle_buffer, seed=cfg.seed,
                                   train_side=side, low_side=plan.start_side if plan.cache_start_side else None,
                                   mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, **common)
    if not plan.validation_count:
        return train_data, None
    return train_data, data.make_dataset(cfg.data_dir, "validation", training=False,
                                         num_examples=plan.validation_count, **common)


def build_model(cfg, plan: Plan, placement):
    """(compiled model, the fine-tuning callback or None, the time budget's progress variable), built inside the
    strategy's scope, with the run's learning-rate schedule (schedules.for_run)."""
    with placement.strategy.scope():
        model = models.build_model(cfg, plan.image_size, any_size=plan.start_side is not None)
        progress = keras.Variable(0.0, dtype="float32", trainable=False, name="budget_progress")
        compile_model(model, cfg, schedules.for_run(cfg, plan, progress))
        freeze = fine_tune.prepare_fine_tuning(model, cfg, plan.head_epochs)
    return model, freeze, progress


def compile_model(model, cfg: config_lib.TrainConfig, schedule) -> None:
    # With use_ema, Keras keeps the average in the optimizer (saved with every backup) and writes it into the model's
    # trainable weights when fit ends (finalize_variable_values).
    ema = {"use_ema": bool(cfg.ema_momentum), "ema_momentum": cfg.ema_momentum or 0.99}
    if models.uses_plain_adam(cfg):
        optimizer = keras.optimizers.Adam(schedule, **ema)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])


class EpochLogger(keras.callbacks.CSVLogger):
    """history.csv with epochs numbered from 1, as the log ("Epoch 1/40") and report.png count them; with
    `log_epochs` also one INFO line per epoch (for --log_format json, where Keras's own lines are off)."""

    def __init__(self, filename, append=False, log_epochs=False):
        super().__init__(filename, append=append)
        self.log_epochs = log_epochs

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)
        if self.log_epochs:
            shown = ", ".join(f"{key} {float(value):.4g}" for key, value in sorted((logs or {}).items()))
            log.info(f"epoch {epoch + 1}/{self.params.get('epochs', '?')}: {shown}")


def make_callbacks(cfg, outputs: Outputs, monitor: str, earlier_history: list, freeze, budget, backups,
                   resize=None) -> list:
    best_so_far = min((row[monitor] for row in earlier_history if monitor in row), default=None)
    callbacks = [
        EpochLogger(outputs.history, append=True, log_epochs=cfg.log_format == "json"),
        keras.callbacks.ModelCheckpoint(outputs.best_weights, monitor=monitor, save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        backups,  # last: an epoch's history row and checkpoint are written before its backup
    ]
    if importlib.util.find_spec("tensorboard"):  # tf.summary needs the tensorboard package; tensorflow-cpu lacks it
        callbacks.insert(-1, keras.callbacks.TensorBoard(join(outputs.out_dir, "logs"), update_freq="epoch",
                                                         profile_batch=0))
    else:
        log.warning("the tensorboard package is not installed: no TensorBoard logs (pip install tensorboard to get "
                    "them); history.csv and report.png still record the curves")
    if resize is not None:  # after the budget, whose progress it reads
        callbacks.insert(0, resize)
    if budget is not None:
        callbacks.insert(0, budget)
    elif cfg.early_stopping_patience:  # with a budget the rate anneals to its end: noise must not cut that short
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.early_stopping_patience))
    if freeze is not None:
        callbacks.insert(0, freeze)
    return callbacks


@dataclasses.dataclass(frozen=True)
class Trained:
    epochs: int  # epochs this process ran (after a resume, not counting the earlier ones)
    seconds: float
    steps: int  # training steps this process ran: a budget stops mid-epoch, so not epochs x steps per epoch


class _StepCount(keras.callbacks.Callback):
    """Counts the training steps model.fit runs (a resumed run's earlier steps are not counted)."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def fit_model(model, cfg, plan: Plan, placement, train_data, validation_data, callbacks, stop) -> Trained:
    """model.fit; raises backup.Interrupted when SIGTERM arrived (the backup is written by then)."""
    started = time.monotonic()
    count = _StepCount()
    with distribute.fit_scope(model, placement):
        fit = model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=plan.steps_per_epoch,
                        validation_data=validation_data, callbacks=[*callbacks, count], shuffle=False,
                        verbose=0 if cfg.log_format == "json" else 1 if sys.stdout.isatty() else 2)
    if stop.signal_name:  # arrived after the last step: the epoch-end backup already holds everything
        raise backup.Interrupted(f"{stop.signal_name} after training; backup at "
                                 f"{join(cfg.model_dir, model_dir.BACKUP_DIR)}")
    return Trained(epochs=len(fit.epoch), seconds=time.monotonic() - started, steps=count.steps)


def training_facts(trained: Trained, plan: Plan, placement, stopped_by: str, resize=None) -> dict:
    """What metrics.json records about the training itself."""
    steps = trained.steps
    return {
        **({} if resize is None else {"steps_by_training_side": {str(k): v for k, v in sorted(resize.sides.items())}}),
        "stopped_by": stopped_by,
        "train_seconds_this_run": round(trained.seconds, 1),
        "train_steps_this_run": steps,
        # includes validation passes and the first step's graph tracing, so it is a lower bound on step rate
        "train_steps_per_second_this_run": round(steps / trained.seconds, 3) if steps else None,
        "global_batch_size": plan.global_batch,
        "num_replicas": placement.num_replicas,
    }


def summarize(cfg, metrics: dict, train_seconds: float, outputs: Outputs, published: str) -> None:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    log.info(f"done in {train_seconds / 60:.1f} min of training ({metrics['stopped_by']}, "
             f"{metrics['train_steps_this_run']:,} steps); {metrics['split']} "
             f"accuracy {fmt(metrics['accuracy'])}, precision {fmt(metrics['precision'])}, recall "
             f"{fmt(metrics['recall'])}, ROC AUC {fmt(metrics['roc_auc'])}, log loss {fmt(metrics['log_loss'])} on "
             f"{metrics['examples']} images")
    written = (join(cfg.model_dir, name) for name in (model_dir.METRICS_FILE, model_dir.REPORT_FILE,
                                                      model_dir.MISTAKES_FILE))
    log.info("metrics {}, report {}, mistakes {}".format(*written) + f", history {outputs.history}, export {published}")


if __name__ == "__main__":
    sys.exit(main())
