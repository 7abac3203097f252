"""Case 5: a preprocessing job killed while writing shards leaves no shards that look like a dataset; the re-run
writes exactly one complete set; the killed run's staging directory is reported, and removed once stale."""

import signal
import subprocess
import sys
import time

import pytest

from beam_pipelines import preprocess
from tests import corpus
from tests.trainer.datasets import REPO
from trainer import features

pytestmark = pytest.mark.slow


def _tree(root) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _appeared(staging_glob) -> bool:
    """Whether the glob matches yet; a directory the job removes while the glob walks it (Beam's temporary
    directories come and go) means not yet."""
    try:
        return any(staging_glob())
    except FileNotFoundError:
        return False


def _kill_while_writing(args, staging_glob, attempts: int = 3):
    """Starts the job and SIGKILLs it as soon as its first TFRecord file appears under the staging directory,
    i.e. while the sinks write. Retries when the job was quicker than the watcher (it then finished normally)."""
    for _ in range(attempts):
        process = subprocess.Popen([sys.executable, "-m", "beam_pipelines.preprocess", *args], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while process.poll() is None and not _appeared(staging_glob):
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        if process.returncode == -signal.SIGKILL:
            return
        assert process.returncode == 0, stderr[-3000:]
    pytest.fail(f"the job finished {attempts} times before any shard appeared in its staging directory")


def test_a_job_killed_mid_write_leaves_the_old_dataset_and_the_rerun_writes_one_complete_set(tmp_path, caplog):
    images, output = tmp_path / "images", tmp_path / "data"
    corpus.write_easy_dataset(images, per_class=30, size=32)
    args = [f"--input={images}", f"--output_dir={output}", "--image_size=16", "--decode_timeout_seconds=0"]
    preprocess.run([*args, "--runner=DirectRunner", "--num_shards=2"])
    old = _tree(output)

    _kill_while_writing([*args, "--overwrite", "--num_shards=3"],
                        lambda: tmp_path.glob(f"data.staging-*/**/*{features.SHARD_SUFFIX}"))
    assert _tree(output) == old  # nothing of the killed run reached the dataset: the old one is whole
    [leftover] = tmp_path.glob("data.staging-*")
    assert list(leftover.rglob(f"*{features.SHARD_SUFFIX}"))  # the killed run had written shards: there

    caplog.set_level("WARNING", logger="beam_pipelines.preprocess")
    metadata = preprocess.run([*args, "--runner=DirectRunner", "--overwrite", "--num_shards=3"])
    names = sorted(path.name for path in output.iterdir())
    shards = [f"{split}-{i:05d}-of-00003{features.SHARD_SUFFIX}" for split in features.SPLITS for i in range(3)]
    assert names == sorted(["metadata.json", "rejected-00000-of-00001.jsonl", *shards])
    assert sum(metadata["counts"][split]["total"] for split in features.SPLITS) == metadata["written"] == 60

    # The killed run's directory: reported (it may belong to a run still going), removed once it is stale.
    assert any(str(leftover) in message and "did not finish" in message for message in caplog.messages)
    assert leftover.exists()
    dataset = _tree(output)
    stale_later = time.time() + (preprocess._STALE_STAGING_HOURS + 1) * 3600
    assert preprocess.clean_leftovers(str(output), now=stale_later) == {"removed": [str(leftover)], "kept": []}
    assert not leftover.exists() and _tree(output) == dataset
