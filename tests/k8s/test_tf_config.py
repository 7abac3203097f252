"""TF_CONFIG for the multi-node training Job, built by running the container's command exactly as the
rendered manifest states it: the script out of the rendered ConfigMap, the env the pod gets, and
JOB_COMPLETION_INDEX as the Job controller sets it for Indexed Jobs. The trainer is replaced by a probe
on PATH that records the TF_CONFIG and arguments it was started with."""

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.k8s.manifests import expand, pod_env, render_overlay


def indexed_job(objects):
    [job] = [o for o in objects if o["kind"] == "Job" and o["spec"].get("completionMode") == "Indexed"]
    return job


def job_pod_env(job, container, config_maps, index):
    """The environment Kubernetes gives this container in pod `index` of the Job."""
    pod_labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name":
                  job["metadata"]["name"], "batch.kubernetes.io/job-completion-index": str(index)}
    return pod_env(container, config_maps, pod_labels, job["metadata"]["namespace"],
                   controller_env={"JOB_COMPLETION_INDEX": str(index)})  # added by the Job controller, Indexed mode


@pytest.fixture
def multinode(tmp_path):
    objects = render_overlay("multinode")
    job = indexed_job(objects)
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    # Lay the mounted ConfigMaps out under tmp_path exactly as the kubelet would at their mountPaths.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source:
            root = tmp_path / "mounts" / mount["mountPath"].lstrip("/")
            root.mkdir(parents=True)
            for filename, text in config_maps[source["name"]].items():
                (root / filename).write_text(text)
            mounts[mount["mountPath"]] = str(root)
    probe_bin = tmp_path / "bin"
    probe_bin.mkdir()
    return {"objects": objects, "job": job, "container": container, "config_maps": config_maps,
            "mounts": mounts, "probe_bin": probe_bin, "tmp_path": tmp_path}


def trainer_word(argv):
    """The command the TF_CONFIG wrapper hands over to (catsdogs-train)."""
    return next(word for word in argv if word.startswith("catsdogs-"))


def run_pod(setup, index):
    """Runs the container command of pod `index`; returns what the probe standing in for the trainer saw."""
    container, job = setup["container"], setup["job"]
    env = job_pod_env(job, container, setup["config_maps"], index)
    argv = [expand(word, env) for word in container["command"] + container.get("args", [])]
    for mount_path, local in setup["mounts"].items():  # the only change: where the volume is mounted
        argv = [local + word[len(mount_path):] if word.startswith(mount_path + "/") else word for word in argv]
    trainer = trainer_word(argv)
    record = setup["tmp_path"] / f"probe-{index}.json"
    probe = setup["probe_bin"] / trainer
    probe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                     f"json.dump({{'tf_config': os.environ.get('TF_CONFIG'), 'argv': sys.argv[1:]}}, "
                     f"open({str(record)!r}, 'w'))\n")
    probe.chmod(probe.stat().st_mode | stat.S_IXUSR)
    env["PATH"] = f"{setup['probe_bin']}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return result, record, argv


def test_each_worker_gets_the_tf_config_multiworkermirroredstrategy_expects(multinode):
    job = multinode["job"]
    workers = job["spec"]["completions"]
    assert workers >= 2 and job["spec"]["parallelism"] == workers
    pod = job["spec"]["template"]["spec"]
    [service] = [o for o in multinode["objects"]
                 if o["kind"] == "Service" and o["metadata"]["name"] == pod["subdomain"]]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS record per pod
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in [p["containerPort"] for p in multinode["container"]["ports"]]
    expected_hosts = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{port['port']}"
                      for i in range(workers)]

    for index in range(workers):
        result, record, argv = run_pod(multinode, index)
        assert result.returncode == 0, result.stderr
        seen = json.loads(record.read_text())
        assert json.loads(seen["tf_config"]) == {"cluster": {"worker": expected_hosts},
                                                 "task": {"type": "worker", "index": index}}
        assert seen["argv"] == argv[argv.index(trainer_word(argv)) + 1:]
        assert "--data_dir=gs://" in " ".join(seen["argv"])  # $(DATASET) was expanded from the ConfigMap


def test_an_index_outside_the_job_fails_instead_of_joining_a_wrong_cluster(multinode):
    workers = multinode["job"]["spec"]["completions"]
    result, record, _ = run_pod(multinode, workers)
    assert result.returncode == 2 and "outside" in result.stderr  # 2: a configuration error, not retried
    assert not record.exists()
