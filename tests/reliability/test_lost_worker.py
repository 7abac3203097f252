"""Issue 16, item 4: a multi-worker run that loses a worker fails fast with exit status 5 ("lost a worker: restart
to resume from the backup") instead of hanging until the Job's deadline.

Two real local workers (MultiWorkerMirroredStrategy over gRPC on 127.0.0.1): one is killed (SIGKILL: its sockets
close) or frozen (SIGSTOP: a node gone silent, nothing closes), and the other must exit 5 within BOUND. The
watchdog, for a worker alive but stuck where TensorFlow's heartbeat sees nothing wrong, is run on its own.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.trainer.datasets import REPO, write_dataset
from tests.trainer.test_train import command, epochs_logged
from trainer import distribute, train

pytestmark = pytest.mark.slow

BOUND = 180  # seconds: "within a few minutes"; TensorFlow's heartbeat takes about 10 s here, the watchdog 60


@pytest.mark.parametrize("victim, how", [(1, signal.SIGKILL), (0, signal.SIGSTOP)],
                         ids=["worker-killed", "chief-frozen"])
def test_losing_a_worker_makes_the_other_exit_5_within_the_bound(tmp_path, victim, how):
    dataset = write_dataset(tmp_path / "data", size=32, num_shards=2)
    model_dir = tmp_path / "model"
    hosts = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        env = os.environ | {"TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                     "task": {"type": "worker", "index": index}})}
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
        processes.append((subprocess.Popen(
            command(dataset, model_dir, "--model", "seed_cnn", "--epochs", "100", "--batch_size", "4",
                    "--warmup_epochs", "0", "--early_stopping_patience", "0", "--worker_timeout_minutes", "1"),
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    survivor = processes[1 - victim][0]
    try:
        deadline = time.monotonic() + 300
        while epochs_logged(model_dir) < 1:  # training is under way on both workers
            assert survivor.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        processes[victim][0].send_signal(how)
        lost = time.monotonic()
        code = survivor.wait(timeout=BOUND)
        took = time.monotonic() - lost
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    output = (tmp_path / f"worker{1 - victim}.log").read_text()
    print(f"the survivor exited {code} {took:.1f} s after its peer got {how.name}")
    assert code == train.EXIT_LOST_WORKER == 5, output[-3000:]
    assert "lost a worker" in output and "resume" in output


WATCHDOG = """
import sys, time
from trainer import distribute
distribute.Watchdog(timeout_seconds=float(sys.argv[1]), grace_seconds=1).start()
time.sleep(120)  # the main thread stuck where no collective runs: only exiting ends it
sys.exit(0)
"""


def test_the_watchdog_ends_a_process_whose_steps_stopped(tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", WATCHDOG, "2"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == distribute.EXIT_LOST_WORKER, result.stderr[-2000:]
    assert "no training step finished" in result.stderr and time.monotonic() - started < 60


def test_the_watchdog_leaves_a_process_that_makes_progress_alone():
    watchdog = distribute.Watchdog(timeout_seconds=0.5, grace_seconds=0.1).start()
    try:
        for _ in range(20):  # 2 s of steps every 0.1 s: never 0.5 s without one
            time.sleep(0.1)
            watchdog.beat()
        assert watchdog._thread.is_alive()  # still watching: it never fired
    finally:
        watchdog.stop()
