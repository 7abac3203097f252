"""Sets TF_CONFIG for one pod of an Indexed Job, then runs the given command (the trainer) with it.

MultiWorkerMirroredStrategy reads {"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker",
"index": i}}. Kubernetes names the pods of an Indexed Job `<job>-<index>` and, with `subdomain` set to a
headless Service, resolves `<job>-<index>.<service>` inside the namespace. Inputs, all from the pod's env:

    JOB_COMPLETION_INDEX  this pod's index (set by Kubernetes for Indexed Jobs)
    TF_CONFIG_JOB         the Job's name (from the pod label batch.kubernetes.io/job-name)
    TF_CONFIG_SERVICE     the headless Service, i.e. the pod template's `subdomain`
    TF_CONFIG_WORKERS     the number of workers (the Job's completions and parallelism)
    TF_CONFIG_PORT        the port every worker listens on

Usage (the container command): python3 tf_config.py catsdogs-train --data_dir=... . Standard library only.
"""

import json
import os
import sys


def build_tf_config(index: int, workers: int, job: str, service: str, port: int) -> dict:
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} is outside 0..{workers - 1}")
    hosts = [f"{job}-{i}.{service}:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: tf_config.py COMMAND [ARG ...]")
    env = os.environ
    config = build_tf_config(int(env["JOB_COMPLETION_INDEX"]), int(env["TF_CONFIG_WORKERS"]),
                             env["TF_CONFIG_JOB"], env["TF_CONFIG_SERVICE"], int(env["TF_CONFIG_PORT"]))
    env["TF_CONFIG"] = json.dumps(config)
    print(f"TF_CONFIG={env['TF_CONFIG']}", file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)  # the trainer replaces this process, so it receives SIGTERM directly


if __name__ == "__main__":
    main(sys.argv[1:])
