"""Fault-tolerant training: back up (weights, optimizer state, epoch), verify what is restored, resume.

A backup goes to <model_dir>/backup every --backup_every_steps steps, at every epoch end and on SIGTERM (the process
then leaves model.fit at once, see `Interrupted`). Each backup records the sha256 of its weights file in its
metadata, written last; on start the newest intact backup is restored (`choose_backup`: the latest, else the
previous one), and when backups exist but none is intact the run refuses to start over silently (`BackupUnusable`).
history.csv is trimmed to the epochs before the resumed one, so each epoch appears in it once.
"""

import dataclasses
import json
import shutil
import signal
import tempfile

import keras
import tensorflow as tf

from trainer import evaluate, logger, storage
from trainer.storage import join

log = logger.get()
BACKUP_WEIGHTS = "latest.weights.h5"  # in <model_dir>/backup, next to BACKUP_METADATA: Keras's names
BACKUP_METADATA = "training_metadata.json"


class Interrupted(Exception):
    """Raised from a callback to leave model.fit at once (after the backup is written), skipping validation."""


class BackupUnusable(RuntimeError):
    """The backup in <model_dir>/backup cannot be restored; the message says why and what to do."""


class StopRequest:
    """Set by the SIGTERM handler; read by the backup callback after each step."""

    def __init__(self):
        self.signal_name = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        log.warning(f"received {self.signal_name}: writing a backup at the end of this step, then exiting")


@dataclasses.dataclass(frozen=True)
class Backup:
    """One usable backup: a weights file (model and optimizer state) and the epoch it resumes at."""

    weights: str
    epoch: int
    which: str  # "latest", or "previous" when the latest one was unusable
    skipped: str = ""  # why the latest one was unusable
    trained_seconds: float = 0.0  # training time used before it (what the time budget counts)


def load_weights_file(model, path: str) -> None:
    """model.load_weights for any file name: Keras picks the format by the suffix and refuses the previous backup's
    `.weights.h5.bkp`, so such a file is loaded through a local copy named `*.weights.h5`."""
    if path.endswith(".weights.h5") and not storage.is_remote(path):
        model.load_weights(path)
        return
    local_dir = tempfile.mkdtemp(prefix="catsdogs-restore-")
    try:
        local = join(local_dir, BACKUP_WEIGHTS)
        tf.io.gfile.copy(path, local, overwrite=True)
        model.load_weights(local)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _check_backup(weights: str, metadata: str) -> tuple[dict | None, str]:
    """(the metadata, "") for a usable weights + metadata pair, else (None, why not)."""
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
    if expected is not None and storage.sha256(weights) != expected:
        return None, f"{weights} does not match the sha256 recorded in {metadata}: it is truncated or corrupt"
    return recorded, ""


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
        recorded, problem = _check_backup(weights, metadata)
        if recorded is not None:
            return Backup(weights, recorded["epoch"], which, skipped="; ".join(problems),
                          trained_seconds=float(recorded.get("trained_seconds", 0.0)))
        problems.append(problem)
    raise BackupUnusable(
        f"the backup in {backup_dir} cannot be restored (latest: {problems[0]}; previous: {problems[1]}). Not "
        f"starting over silently: put a good copy of the backup there to resume, or delete {backup_dir} to train "
        f"this model_dir again from epoch 0")


def backup_epoch(backup_dir: str) -> int:
    """The epoch the backup in backup_dir resumes at (0 when there is none), saying so when it falls back to the
    previous backup. Raises BackupUnusable (see choose_backup)."""
    backup = choose_backup(backup_dir)
    if backup is None:
        return 0
    if backup.which == "previous":
        log.warning(f"the latest backup is unusable ({backup.skipped}); resuming from the previous backup, "
                    f"at epoch {backup.epoch}")
    return backup.epoch


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """keras BackupAndRestore that also backs up at every epoch end and before leaving on SIGTERM, and verifies
    what it restores.

    Restores the weights and optimizer state of the newest intact backup (`choose_backup`: the sha256 of the
    weights file is recorded in the metadata written after it), then Keras replays the interrupted epoch from its
    start. Every worker of a multi-worker run restores from the chief's backup; only the chief writes there.
    With a `clock` (the time budget's, trainer/schedules.py), the training time used is saved and restored too.
    Relies on BackupAndRestore's `_save_model` hook and path attributes (keras 3.15, pinned in setup.py).
    """

    def __init__(self, backup_dir: str, save_freq: int, stop: StopRequest, write_dir: str | None = None,
                 clock=None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True, delete_checkpoint=False)
        self.stop = stop
        self.write_dir = write_dir
        self.clock = clock
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
            if self.clock is not None:
                self.clock.seconds_before = backup.trained_seconds
        if self.write_dir:
            # Non-chief workers of a multi-worker run still save (saving can create variables, which under
            # MultiWorkerMirroredStrategy is a collective every worker must join) but into their own temp dir.
            self.backup_dir = self.write_dir
            self._weights_path = join(self.write_dir, BACKUP_WEIGHTS)
            self._training_metadata_path = join(self.write_dir, BACKUP_METADATA)
            self._prev_weights_path = self._weights_path + ".bkp"
            self._prev_training_metadata_path = self._training_metadata_path + ".bkp"
            self._latest_is_intact = False

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
            checksum = storage.sha256(local)
            tf.io.gfile.copy(local, self._weights_path, overwrite=True)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
        with tf.io.gfile.GFile(self._training_metadata_path, "w") as handle:
            handle.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                     "weights_sha256": checksum,
                                     "trained_seconds": self.clock.elapsed() if self.clock is not None else 0.0}))
        self._latest_is_intact = True

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.stop.signal_name:
            self._save_model()
            raise Interrupted(f"stopped by {self.stop.signal_name} at epoch {self._current_epoch} step {batch + 1}; "
                              f"backup written to {self.backup_dir}")

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._save_model()


def keep_history_before(path: str, epoch: int) -> list[dict]:
    """Keeps the history.csv rows of the `epoch` epochs completed before a resume (numbered from 1, as the log
    counts them) and drops those that will be replayed, so each epoch appears once."""
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
            if int(float(line.split(",")[column])) <= epoch:
                kept.append(line)
        except (ValueError, IndexError):
            continue
    if epoch == 0:
        tf.io.gfile.remove(path)
        return []
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("\n".join(kept) + "\n")
    return evaluate.read_history(path)
