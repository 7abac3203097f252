"""The one place the distribution strategy, replica count and precision are chosen, and where the strategy's
workarounds live.

- TF_CONFIG naming more than one task (chief + workers): MultiWorkerMirroredStrategy (synchronous all-reduce
  across machines; each worker mirrors over its own GPUs). TF_CONFIG is read by TensorFlow's own
  TFConfigClusterResolver.
- Otherwise MirroredStrategy over every visible GPU; with no GPU, over the logical CPU devices when more than
  one is configured (tests, debugging), else TensorFlow's default strategy on the one CPU.

Global batch = per-replica batch x replicas; the learning rate is scaled linearly by the replica count.
Mixed precision (float16 compute, float32 variables) is on by default with GPUs and off on CPU, where it is slow.
Call `choose` before any other TensorFlow work: MultiWorkerMirroredStrategy must be created at program start.

Keras 3.15 needs three workarounds under MultiWorkerMirroredStrategy, all here: `fit_scope` (the deferred build and
the vector step logs) and `barrier` (workers leave together); every worker also saves its backups and checkpoints
(trainer/backup.py), since saving can be a collective.
"""

import contextlib
import dataclasses
import json
import os


@dataclasses.dataclass(frozen=True)
class Placement:
    strategy: object  # tf.distribute.Strategy
    kind: str  # "multi_worker", "mirrored" or "default"
    num_replicas: int  # across all workers
    num_workers: int
    task_type: str
    task_id: int
    is_chief: bool  # the one task that writes checkpoints, logs, metrics and the export
    mixed_precision: bool
    devices: tuple

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi_worker"

    def describe(self) -> dict:
        return {"strategy": self.kind, "num_replicas": self.num_replicas, "num_workers": self.num_workers,
                "task": f"{self.task_type}:{self.task_id}", "is_chief": self.is_chief,
                "mixed_precision": self.mixed_precision, "devices": list(self.devices)}


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
    use_mixed = {"on": True, "off": False, "auto": has_gpu}[mixed_precision]
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return Placement(strategy=strategy, kind=kind, num_replicas=int(strategy.num_replicas_in_sync),
                     num_workers=workers, task_type=cluster.task_type, task_id=cluster.task_id,
                     is_chief=cluster.is_chief, mixed_precision=use_mixed, devices=devices)


def scaled_learning_rate(per_replica_rate: float, num_replicas: int) -> float:
    """Linear scaling: N replicas take steps N times as large as the global batch is N times larger."""
    return per_replica_rate * num_replicas


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
