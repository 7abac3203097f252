"""The one place the distribution strategy, replica count and precision are chosen.

- TF_CONFIG naming more than one task (chief + workers): MultiWorkerMirroredStrategy (synchronous all-reduce
  across machines; each worker mirrors over its own GPUs).
- Otherwise MirroredStrategy over every visible GPU; with no GPU, over the logical CPU devices when more than
  one is configured (tests, debugging), else TensorFlow's default strategy on the one CPU.

Global batch = per-replica batch x replicas; the learning rate is scaled linearly by the replica count.
Mixed precision (float16 compute, float32 variables) is on by default with GPUs and off on CPU, where it is slow.
Call `choose` before any other TensorFlow work: MultiWorkerMirroredStrategy must be created at program start.
"""

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

    def describe(self) -> dict:
        return {"strategy": self.kind, "num_replicas": self.num_replicas, "num_workers": self.num_workers,
                "task": f"{self.task_type}:{self.task_id}", "is_chief": self.is_chief,
                "mixed_precision": self.mixed_precision, "devices": list(self.devices)}


def read_tf_config(environ=os.environ) -> dict:
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text[:200]!r}") from None


def cluster_tasks(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief_task(tf_config: dict) -> bool:
    task = tf_config.get("task", {})
    task_type, task_id = task.get("type", "worker"), int(task.get("index", 0))
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and not tf_config.get("cluster", {}).get("chief")


def choose(mixed_precision: str = "auto") -> Placement:
    """Picks the strategy for this process (see the module docstring) and sets the Keras dtype policy."""
    import keras
    import tensorflow as tf

    tf_config = read_tf_config()
    task = tf_config.get("task", {})
    if cluster_tasks(tf_config) > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        kind, workers = "multi_worker", cluster_tasks(tf_config)
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
                     num_workers=workers, task_type=task.get("type", "worker"), task_id=int(task.get("index", 0)),
                     is_chief=is_chief_task(tf_config) if workers > 1 else True, mixed_precision=use_mixed,
                     devices=devices)


def scaled_learning_rate(per_replica_rate: float, num_replicas: int) -> float:
    """Linear scaling: N replicas take steps N times as large as the global batch is N times larger."""
    return per_replica_rate * num_replicas
