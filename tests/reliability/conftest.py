"""What the reliability tests share: one exported tiny model per session, and running a job as its own process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipelines import isolation
from beam_pipelines.predictions import COMMITTED
from tests.beam_pipelines.test_score import export_tiny_model
from tests.trainer.datasets import REPO

FAULTY_DECODER = "tests.reliability.faulty:decode"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """An export root (a version directory and `latest`) of a small untrained CNN taking 32x32 pictures."""
    root = tmp_path_factory.mktemp("model") / "export"
    export_tiny_model(root)
    return root


def job_env(decoder: str | None = FAULTY_DECODER, **extra) -> dict:
    """os.environ for a job process, with the stand-in decoder (None: the real one) and `extra` variables."""
    env = {key: value for key, value in os.environ.items() if key != isolation.FAULT_INJECTION_ENV}
    if decoder:
        env[isolation.FAULT_INJECTION_ENV] = decoder
    return {**env, **{key: str(value) for key, value in extra.items()}}


def score_command(*flags, kill_before: str | None = None, kill_after: str | None = None,
                  job: str = "beam_pipelines.score") -> list[str]:
    """`python -m beam_pipelines.score --runner DirectRunner ...` (the DirectRunner, as `make score` runs it), or the
    same through tests.reliability.faulty's launcher when a kill point is given. `job`: the entry module."""
    job = [job, "--runner", "DirectRunner", *map(str, flags)]
    if not (kill_before or kill_after):
        return [sys.executable, "-m", *job]
    hooks = [*(["--kill_before", kill_before] if kill_before else []),
             *(["--kill_after", kill_after] if kill_after else [])]
    return [sys.executable, "-m", "tests.reliability.faulty", *hooks, "--", *job]


def preprocess_command(*flags, **kill) -> list[str]:
    """score_command for `python -m beam_pipelines.preprocess`."""
    return score_command(*flags, job="beam_pipelines.preprocess", **kill)


def run_job(command, env=None, timeout: float = 300, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Runs a job process to its end; fails the test, with its stderr, when its exit status is not `expect`."""
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if expect is not None:
        assert result.returncode == expect, f"exit {result.returncode}, expected {expect}\n{result.stderr[-4000:]}"
    return result


def score_here(*flags) -> dict:
    """score.run in this process (the same code as the command, without paying for another interpreter and
    TensorFlow import): for the runs a test does not kill. Returns the summary."""
    from beam_pipelines import score

    return score.run(["--runner", "DirectRunner", *map(str, flags)])


def preprocess_here(*flags) -> dict:
    """preprocess.run in this process on the DirectRunner; returns the new version's metadata."""
    from beam_pipelines import preprocess

    return preprocess.run(["--runner", "DirectRunner", *map(str, flags)])


def read_dataset(output_dir) -> tuple[dict, dict]:
    """(source -> split of every record, shown path -> rejection row) of the dataset's current version, local or gs://;
    fails on a source written twice and on bytes that are not valid UTF-8 in the records' sources or the lists."""
    from tensorflow.core.example import example_pb2

    from beam_pipelines import file_listing, tfrecords
    from trainer import dataset_contract, features, storage

    version_dir, metadata = dataset_contract.locate(str(output_dir), storage.read_bytes, storage.exists)
    sources = {}
    for split in features.SPLITS:
        for path, count in dataset_contract.split_shards(metadata, version_dir, split):
            records = tfrecords.decode(storage.read_bytes(path))
            assert len(records) == count, path
            for record in records:
                example = example_pb2.Example.FromString(record)
                source = example.features.feature[features.SOURCE_KEY].bytes_list.value[0].decode("utf-8")
                assert source not in sources, f"{source} written twice"
                sources[source] = split
    rejections = {}
    for pattern in ("rejected-*.jsonl", "duplicates-*.jsonl"):
        for ref in file_listing.list_files(storage.join(version_dir, pattern)):
            for line in storage.read_bytes(ref.path).decode("utf-8").splitlines():
                row = json.loads(line)
                rejections[row["path"]] = row
    return sources, rejections


def read_outcomes(run_dir: Path) -> tuple[dict, dict]:
    """(path -> prediction row, path -> error row) of a published local run; fails on a file listed twice or on bytes
    that are not valid UTF-8."""
    predictions, errors = {}, {}
    for pattern, rows in (("predictions-*.jsonl", predictions), ("errors-*.jsonl", errors)):
        for shard in sorted(run_dir.glob(pattern)):
            for line in shard.read_bytes().decode("utf-8").splitlines():
                row = json.loads(line)
                assert row["path"] not in predictions and row["path"] not in errors, f"{row['path']} twice"
                rows[row["path"]] = row
    return predictions, errors


def commit_markers(staging: Path) -> list[Path]:
    """The commit markers of a local staging dir, as the resumed run reads them: not the `.tmp-*` file of a marker
    whose write a SIGKILL interrupted (its name ends in .json too, and the launcher skips it). The rule is written
    out here rather than taken from score._marker_paths, so that a change to the launcher's rule cannot move the count
    its tests compare against."""
    return [path for path in (staging / COMMITTED).glob("*.json") if not path.name.startswith(".")]
