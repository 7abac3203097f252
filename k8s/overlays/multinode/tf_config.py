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
A missing or inconsistent input exits 2, the trainer's code for a configuration error, which the Job's
podFailurePolicy does not retry: a replacement pod would get the same env.
"""

import json
import os
import sys

USAGE_ERROR = 2  # the trainer's exit code for a configuration error


def build_tf_config(index: int, workers: int, job: str, service: str, port: int) -> dict:
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} is outside 0..{workers - 1}")
    hosts = [f"{job}-{i}.{service}:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def fail(message: str) -> None:
    print(f"tf_config.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def main(argv: list[str]) -> None:
    if not argv:
        fail("usage: tf_config.py COMMAND [ARG ...]")
    env = os.environ
    try:
        config = build_tf_config(int(env["JOB_COMPLETION_INDEX"]), int(env["TF_CONFIG_WORKERS"]),
                                 env["TF_CONFIG_JOB"], env["TF_CONFIG_SERVICE"], int(env["TF_CONFIG_PORT"]))
    except KeyError as error:
        fail(f"{error.args[0]} is not set; the Job's pod template must set it (see this file's docstring)")
    except ValueError as error:
        fail(str(error))
    env["TF_CONFIG"] = json.dumps(config)
    print(f"TF_CONFIG={env['TF_CONFIG']}", file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)  # the trainer replaces this process, so it receives SIGTERM directly


if __name__ == "__main__":
    main(sys.argv[1:])
