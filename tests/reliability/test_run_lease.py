"""Two scoring runs with the same run id (a manual run during the CronJob's), or two preprocessing runs on the same
dataset: the second refuses (exit 75, naming the holder) while the first runs, touching nothing of it, and takes over
once the first is dead (SIGKILLed), finishing the work."""

import json
import signal
import subprocess
import time

import pytest

from beam_pipelines import lifecycle, score
from tests import corpus
from tests.reliability import faulty
from tests.reliability.conftest import (
    commit_markers,
    job_env,
    preprocess_command,
    preprocess_here,
    read_dataset,
    read_outcomes,
    run_job,
    score_command,
    score_here,
)
from tests.trainer.datasets import REPO

pytestmark = pytest.mark.slow


def test_a_second_run_of_a_run_id_refuses_while_the_first_runs_and_takes_over_once_it_is_killed(tiny_export,
                                                                                                  tmp_path, caplog):
    images, output = tmp_path / "images", tmp_path / "scores"
    files = corpus.write_easy_dataset(images, per_class=20, size=24)
    command = score_command("--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "hourly",
                            "--files_per_batch", 2)
    staging = output / ".staging-hourly"
    # 1.5 s per file: the first run would score for a minute, so it still runs when the second (a process starting
    # TensorFlow on a busy machine) gets to its lease; it is killed long before it ends.
    first = subprocess.Popen(command, cwd=REPO, env=job_env(**{faulty.SLOW_ENV: 1.5}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not commit_markers(staging) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run committed nothing within 300 s"
            time.sleep(0.05)
        attempt = (staging / lifecycle.ATTEMPT_FILE).read_bytes()

        second = run_job(command, env=job_env(), expect=lifecycle.EXIT_LEASE_HELD)
        assert "another run holds run id hourly" in second.stderr and f"pid {first.pid}" in second.stderr
        assert first.poll() is None, "the first run did not survive the second's attempt"
        assert (staging / lifecycle.ATTEMPT_FILE).read_bytes() == attempt  # its staging was left alone
        assert not (output / "hourly").exists()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    committed = len(commit_markers(staging))

    with caplog.at_level("WARNING", logger="beam_pipelines.lifecycle"):
        score_here(*command[command.index("--model"):])  # the same command, in this process
    [takeover] = [message for message in caplog.messages if "took over the lease" in message]
    assert f"pid {first.pid}" in takeover  # logged, naming the dead run
    summary = json.loads((output / "hourly" / score.SUMMARY_FILE).read_text())
    scored, errors = read_outcomes(output / "hourly")
    assert set(scored) == {str(path) for path in files} and not errors
    assert summary["resumed"] == committed * 2 > 0  # it finished the dead run's work instead of starting over
    assert sorted(path.name for path in output.iterdir()) == ["_incremental", "hourly"]


def test_a_second_preprocessing_run_on_a_dataset_refuses_while_the_first_runs_and_takes_over_once_it_is_killed(
        tmp_path, caplog):
    images, output = tmp_path / "images", tmp_path / "data"
    files = corpus.write_easy_dataset(images, per_class=20, size=32)
    flags = ["--input", images, "--output_dir", output, "--image_size", 32, "--files_per_batch", 4,
             "--skip_if_current"]
    first = subprocess.Popen(preprocess_command(*flags), cwd=REPO, env=job_env(**{faulty.SLOW_ENV: 1.5}),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((output / "v00001").glob("facts-*.jsonl")) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run wrote nothing within 300 s"
            time.sleep(0.05)
        written = sorted(path.name for path in (output / "v00001").iterdir())

        with pytest.raises(SystemExit) as refused:  # a manual run while the scheduled one works on the dataset
            preprocess_here(*flags)
        assert refused.value.code == lifecycle.EXIT_LEASE_HELD
        assert f"another run holds dataset {output}" in str(refused.value) and f"pid {first.pid}" in str(refused.value)
        assert first.poll() is None
        assert set(written) <= {path.name for path in (output / "v00001").iterdir()}  # its version was left alone
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()

    with caplog.at_level("WARNING"):
        metadata = preprocess_here(*flags)
    assert any("took over the lease" in message and f"pid {first.pid}" in message for message in caplog.messages)
    assert metadata["version"] == "v00001" and metadata["read"] == len(files)
    sources, _ = read_dataset(output)
    assert set(sources) == {str(path) for path in files}
    assert sorted(path.name for path in output.iterdir()) == ["latest", "v00001"]
