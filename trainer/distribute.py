"""The one place the distribution strategy, replica count and precision are chosen, and where the strategy's
workarounds live.

- TF_CONFIG naming more than one task (chief + workers): MultiWorkerMirroredStrategy (synchronous all-reduce
  across machines; each worker mirrors over its own GPUs). TF_CONFIG is read by TensorFlow's own
  TFConfigClusterResolver.
- Otherwise MirroredStrategy over every visible GPU; with no GPU, over the logical CPU devices when more than
  one is configured (tests, debugging), else TensorFlow's default strategy on the one CPU.

Global batch = per-replica batch x replicas; the learning rate is scaled linearly by the replica count.
Mixed precision (float32 variables, lower-precision compute) is on by default where the hardware has the units for it:
float16 on GPUs, bfloat16 on CPUs with AMX (Intel's matrix units, where oneDNN runs bfloat16 convolutions about twice
as fast as float32); off on other CPUs, where it buys nothing (docs/TRAINING.md, "Recipe options").
Call `choose` before any other TensorFlow work: MultiWorkerMirroredStrategy must be created at program start.

Keras 3.15 needs three workarounds under MultiWorkerMirroredStrategy, all here: `fit_scope` (the deferred build and
the vector step logs) and `barrier` (workers leave together); every worker also saves its backups and checkpoints
(trainer/backup.py), since saving can be a collective.

A lost worker (killed, its node gone, or stuck) makes the others exit with EXIT_LOST_WORKER (5) within
--worker_timeout_minutes, so the Job restarts every worker and they resume from the chief's backup:
- TensorFlow's coordination service heartbeats every task and aborts the collectives of the others when one stops
  answering (a killed or frozen process: about 10 s here); `lost_worker_guard` turns that error into LostWorker.
- `Watchdog`, for what heartbeats miss (a process alive but stuck, e.g. on a hung read): when no training or
  validation step finishes for --worker_timeout_minutes, it aborts the collectives, and exits the process if that
  does not end it. TensorFlow's own per-collective timeout (CommunicationOptions.timeout_seconds) is not used: its
  documentation keeps it for debugging, as it starts a thread for every collective of every step.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time

from trainer import logger

log = logger.get()
EXIT_LOST_WORKER = 5


class LostWorker(RuntimeError):
    """A multi-worker collective failed because another worker is gone: restart every worker to resume."""


@dataclasses.dataclass(frozen=True)
class Placement:
    strategy: object  # tf.distribute.Strategy
    kind: str  # "multi_worker", "mirrored" or "default"
    num_replicas: int  # across all workers
    num_workers: int
    task_type: str
    task_id: int
    is_chief: bool  # the one task that writes checkpoints, logs, metrics and the export
    precision: str  # the Keras dtype policy: float32, mixed_float16 or mixed_bfloat16
    devices: tuple

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi_worker"

    @property
    def mixed_precision(self) -> bool:
        return self.precision != "float32"

    def describe(self) -> dict:
        return {"strategy": self.kind, "num_replicas": self.num_replicas, "num_workers": self.num_workers,
                "task": f"{self.task_type}:{self.task_id}", "is_chief": self.is_chief,
                "mixed_precision": self.mixed_precision, "precision": self.precision, "devices": list(self.devices)}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What TF_CONFIG says about this process: the number of training tasks and which one this is."""

    tasks: int
    task_type: str
    task_id: int
    is_chief: bool


def read_cluster() -> Cluster:
    """TF_CONFIG through tf.distribute's TFConfigClusterResolver. The chief is the task of type `chief`, or worker 0
    when the cluster has no chief (MultiWorkerMirroredStrategy's rule). No TF_CONFIG: one task, the chief."""
    import tensorflow as tf

    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return Cluster(tasks=1, task_type="worker", task_id=0, is_chief=True)
    try:
        json.loads(text)  # the resolver would raise a bare JSONDecodeError later, deep inside TensorFlow
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text[:200]!r}") from None
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().as_dict()
    tasks = len(jobs.get("chief", [])) + len(jobs.get("worker", []))
    task_type, task_id = resolver.task_type or "worker", int(resolver.task_id or 0)
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not jobs.get("chief"))
    return Cluster(tasks=tasks, task_type=task_type, task_id=task_id, is_chief=is_chief or tasks <= 1)


def choose(mixed_precision: str = "auto") -> Placement:
    """Picks the strategy for this process (see the module docstring) and sets the Keras dtype policy."""
    import keras
    import tensorflow as tf

    cluster = read_cluster()
    if cluster.tasks > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
        kind, workers = "multi_worker", cluster.tasks
        devices = tuple(strategy.extended.worker_devices)
    else:
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        if gpus or len(cpus) > 1:
            devices = tuple(device.name for device in (gpus or cpus))
            strategy = tf.distribute.MirroredStrategy(devices=list(devices))
            kind = "mirrored"
        else:
            strategy, kind, devices = tf.distribute.get_strategy(), "default", tuple(d.name for d in cpus)
        workers = 1
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    if not has_gpu:
        warn_if_gpus_unused()
    precision = precision_policy(mixed_precision, has_gpu, cpu_has_amx())
    keras.mixed_precision.set_global_policy(precision)
    return Placement(strategy=strategy, kind=kind, num_replicas=int(strategy.num_replicas_in_sync),
                     num_workers=workers, task_type=cluster.task_type, task_id=cluster.task_id,
                     is_chief=cluster.is_chief, precision=precision, devices=devices)


def precision_policy(mixed_precision: str, has_gpu: bool, has_amx: bool) -> str:
    """The Keras dtype policy for --mixed_precision (auto, on, off): float16 compute on GPUs, bfloat16 on CPUs (the
    CPU's native half precision: float16 there is emulated and slow); auto turns it on with GPUs and with AMX."""
    if mixed_precision == "off" or (mixed_precision == "auto" and not (has_gpu or has_amx)):
        return "float32"
    return "mixed_float16" if has_gpu else "mixed_bfloat16"


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AMX bfloat16 units (Linux's amx_bf16 flag); False where /proc/cpuinfo is not there."""
    try:
        with open(cpuinfo) as handle:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in handle)
    except OSError:
        return False


def nvidia_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists ("GPU 0: NVIDIA L4 (UUID: ...)"); none when it is absent or fails."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        listed = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip().startswith("GPU ")]


def warn_if_gpus_unused() -> None:
    """A loud warning when the machine has NVIDIA GPUs that TensorFlow does not see: training would run on the CPU,
    one or two orders of magnitude slower, without saying so."""
    gpus = nvidia_gpus()
    if gpus:
        log.warning(f"nvidia-smi lists {len(gpus)} GPU(s) ({'; '.join(gpus)}) but TensorFlow sees none: THIS RUN "
                    f"TRAINS ON THE CPU. Install the GPU build of TensorFlow (tensorflow[and-cuda] instead of "
                    f"tensorflow-cpu), and check CUDA_VISIBLE_DEVICES and the NVIDIA driver.")


def scaled_learning_rate(per_replica_rate: float, num_replicas: int) -> float:
    """Linear scaling: N replicas take steps N times as large as the global batch is N times larger."""
    return per_replica_rate * num_replicas


def agreement(placement: Placement):
    """A function value -> the mean of value over all replicas (multi-worker: one tiny all-reduce per call, made by
    every worker at the same point; tf.distribute reduces by SUM or MEAN only), so decisions taken from each
    worker's own clock come out the same everywhere; the identity otherwise."""
    if not placement.multi_worker:
        return float
    import tensorflow as tf

    strategy = placement.strategy

    def mean(value: float) -> float:
        return float(strategy.reduce("MEAN", strategy.run(lambda: tf.constant(float(value))), axis=None))

    return mean


def fit_scope(model, placement: Placement):
    """The context model.fit runs in. Multi-worker only, two Keras 3.15 workarounds on `model` (a no-op scope for
    the other strategies):

    - Keras builds the model before fit by all-reducing a sample batch, which fails under
      MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)"). Without a recorded strategy Keras
      defers the build to the first traced step instead; fit runs inside the strategy's scope, so it still
      distributes with this strategy.
    - It then all-reduces each step's logs with reduce("MEAN", axis=0), which rejects scalars: give it vectors.
    """
    if not placement.multi_worker:
        return contextlib.nullcontext()
    import tensorflow as tf

    model._distribute_strategy = None
    train_step, test_step = model.train_step, model.test_step
    model.train_step = lambda batch: {k: tf.reshape(v, [1]) for k, v in train_step(batch).items()}
    model.test_step = lambda batch: {k: tf.reshape(v, [1]) for k, v in test_step(batch).items()}
    return placement.strategy.scope()


def barrier(placement: Placement) -> None:
    """Multi-worker only: a tiny all-reduce, so workers leave together once the chief has exported."""
    if placement.multi_worker:
        import tensorflow as tf

        strategy = placement.strategy
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


@contextlib.contextmanager
def lost_worker_guard(placement: Placement):
    """Multi-worker: the errors TensorFlow raises when a peer is gone (the coordination service's heartbeat or an
    aborted collective) become LostWorker, with what to do. Other strategies: errors pass unchanged, since the same
    error types also come from storage (an unavailable gs://) and would be misnamed."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as error:
        if not placement.multi_worker:
            raise
        first_line = (error.message or str(error)).strip().splitlines()[0][:300]
        raise LostWorker(f"lost a worker ({type(error).__name__}: {first_line}); restart every worker to resume "
                         f"from the backup (a Kubernetes Job does so)") from None


class Watchdog:
    """Ends a multi-worker process that makes no progress: `beat()` after every step; when none comes for
    timeout_seconds, the collectives are aborted (the blocked step raises, and lost_worker_guard names it), and
    the process exits with EXIT_LOST_WORKER if it is still there grace_seconds later."""

    def __init__(self, timeout_seconds: float, grace_seconds: float = 30.0):
        self.timeout_seconds, self.grace_seconds = float(timeout_seconds), float(grace_seconds)
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="catsdogs-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._last = time.monotonic()
        self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        interval = max(0.05, min(self.timeout_seconds / 10, 5.0))
        while not self._stopped.wait(interval):
            idle = time.monotonic() - self._last
            if idle < self.timeout_seconds:
                continue
            log.error(f"no training step finished for {idle / 60:.1f} min (--worker_timeout_minutes): lost a "
                      f"worker; aborting. Restart every worker to resume from the backup.")
            try:  # tf.distribute's own way to fail every pending collective (its health check uses it)
                from tensorflow.python.eager import context
                from tensorflow.python.framework import errors

                context.context().abort_collective_ops(errors.UNAVAILABLE, "catsdogs watchdog: no step in time")
            except Exception as error:  # noqa: BLE001 (exiting below either way)
                log.error(f"could not abort the collectives ({error})")
            if not self._stopped.wait(self.grace_seconds):
                os._exit(EXIT_LOST_WORKER)  # the main thread is stuck where no exception reaches it
            return


@contextlib.contextmanager
def watch_workers(placement: Placement, timeout_minutes: float):
    """Around training and the final barrier: yields the callbacks to add to fit (a Watchdog's heartbeat when
    multi-worker, else none) and turns a lost peer's errors into LostWorker (lost_worker_guard)."""
    if not placement.multi_worker:
        yield []
        return
    watchdog = Watchdog(timeout_minutes * 60).start()
    try:
        with lost_worker_guard(placement):
            yield [heartbeat_callback(watchdog)]
    finally:
        watchdog.stop()


def heartbeat_callback(watchdog: Watchdog):
    """A Keras callback that feeds the watchdog after every training and validation step and epoch."""
    import keras

    class Heartbeat(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            watchdog.beat()

        def on_test_batch_end(self, batch, logs=None):
            watchdog.beat()

        def on_epoch_begin(self, epoch, logs=None):
            watchdog.beat()

        def on_epoch_end(self, epoch, logs=None):
            watchdog.beat()

    return Heartbeat()
