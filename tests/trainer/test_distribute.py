"""TF_CONFIG -> this task's place in the cluster (TensorFlow's TFConfigClusterResolver underneath)."""

import json

import pytest

from trainer import distribute


def cluster_with(monkeypatch, tf_config) -> distribute.Cluster:
    monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str) else json.dumps(tf_config))
    return distribute.read_cluster()


def test_no_tf_config_is_a_single_chief_task(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.read_cluster() == distribute.Cluster(tasks=1, task_type="worker", task_id=0, is_chief=True)
    assert cluster_with(monkeypatch, "  ").tasks == 1


def test_worker_zero_is_the_chief_when_the_cluster_has_no_chief(monkeypatch):
    workers = ["a:2222", "b:2222", "c:2222"]
    first = cluster_with(monkeypatch, {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})
    second = cluster_with(monkeypatch, {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 2}})
    assert (first.tasks, first.is_chief) == (3, True)
    assert (second.tasks, second.task_id, second.is_chief) == (3, 2, False)


def test_a_chief_task_is_the_chief_and_worker_zero_is_not(monkeypatch):
    cluster = {"chief": ["c:2222"], "worker": ["a:2222", "b:2222"]}
    chief = cluster_with(monkeypatch, {"cluster": cluster, "task": {"type": "chief", "index": 0}})
    worker = cluster_with(monkeypatch, {"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert (chief.tasks, chief.is_chief) == (3, True)
    assert (worker.task_type, worker.is_chief) == ("worker", False)


def test_invalid_tf_config_names_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        cluster_with(monkeypatch, "{cluster: nope")


def test_linear_learning_rate_scaling():
    assert distribute.scaled_learning_rate(1e-3, 4) == pytest.approx(4e-3)
