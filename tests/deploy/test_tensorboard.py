"""`make tensorboard` serves MODEL_DIR/logs: the real TensorBoard, started by the target, asked where it reads from."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from tests.k8s.manifests import REPO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_make_tensorboard_serves_the_model_dirs_logs(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "logs").mkdir(parents=True)
    port = free_port()
    log = tmp_path / "tensorboard.log"
    server = subprocess.Popen(["make", "-s", "tensorboard", f"MODEL_DIR={model_dir}", f"TENSORBOARD_PORT={port}"],
                              cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        environment = None
        while environment is None and server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/data/environment", timeout=5) as response:
                    environment = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert environment is not None, f"TensorBoard did not answer on port {port}: {log.read_text()}"
        assert environment["data_location"] == str(model_dir / "logs")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the TensorBoard it started
        server.wait(timeout=30)
