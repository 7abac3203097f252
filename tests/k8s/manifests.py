"""Renders the kustomize overlays the way `make k8s-render` does and walks the objects generically."""

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
K8S_VERSION = "1.32.0"  # the Makefile's K8S_VERSION: the oldest Kubernetes the manifests must work on
WORKLOAD_KINDS = {"Pod", "Job", "CronJob", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    return path


@functools.cache
def render(directory: Path) -> tuple:
    """`kubectl kustomize directory` as a tuple of objects."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_overlay(overlay: str) -> tuple:
    return render(K8S / "overlays" / overlay)


def pod_specs(node, path="") -> list:
    """(path, pod spec) for every pod spec anywhere in an object: any mapping with a `containers` list.
    Found by shape, not by kind, so a new Job, CronJob or Deployment cannot slip past the checks."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append((path, node))
        for key, value in node.items():
            found += pod_specs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += pod_specs(value, f"{path}[{index}]")
    return found


def job_specs(obj: dict) -> list:
    """The Job specs of an object: a Job's own spec, a CronJob's jobTemplate spec."""
    if obj["kind"] == "Job":
        return [obj["spec"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]]
    return []


def containers(pod_spec: dict) -> list:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def pod_env(container: dict, config_maps: dict, pod_labels: dict, namespace: str, controller_env=None) -> dict:
    """The environment Kubernetes gives a container: its envFrom ConfigMaps, what the controller adds
    (controller_env, e.g. JOB_COMPLETION_INDEX), then its env entries in order, each value's $(VAR) expanded from
    the entries before it and fieldRefs read from the pod's labels and namespace."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    env.update(controller_env or {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        field = item["valueFrom"]["fieldRef"]["fieldPath"]
        if field.startswith("metadata.labels['"):
            env[item["name"]] = pod_labels[field[len("metadata.labels['"):-2]]
        elif field == "metadata.namespace":
            env[item["name"]] = namespace
        else:
            raise AssertionError(f"the tests do not know how Kubernetes fills {field}")
    return env
