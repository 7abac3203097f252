"""Jobs SIGKILLed part-way (an evicted pod, a preempted node) and started again with the same command.

Scoring finishes without scoring again what it had committed, and a run killed while it commits a batch or publishes
leaves exactly one complete set after the re-run. Preprocessing killed before it publishes leaves the current dataset
version as it was, and the re-run makes one whole new version.

Every job that is killed is its own process (`python -m beam_pipelines.score` / `.preprocess`, the DirectRunner as
`make` runs them), killed with SIGKILL: no clean-up code runs, as in production. The runs that are not killed run in
this process (the same flags), which saves an interpreter and a TensorFlow import each.
"""

import json
import signal
import subprocess
import time

import pytest

from beam_pipelines import file_listing, score
from tests import corpus
from tests.conftest import upload_tree
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
from trainer import storage

pytestmark = pytest.mark.slow

FILES_PER_BATCH = 10


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> str:
    """SIGKILLs the process as soon as ready() holds (polled every 5 ms); returns its stderr."""
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        return process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()


def _committed_files(staging) -> int:
    """Files accounted for by the commit markers present (each marker's name ends in .<files>.json)."""
    return sum(int(path.name.rsplit(".", 2)[-2]) for path in commit_markers(staging))


def _rows_written(staging) -> set:
    """Paths in the predictions and errors files of a staging directory, committed or not."""
    paths = set()
    for shard in [*staging.glob("predictions-*"), *staging.glob("errors-*")]:
        paths.update(json.loads(line)["path"] for line in shard.read_text(encoding="utf-8").splitlines())
    return paths


def _assert_one_complete_set(output, run_id, files):
    """The output directory holds the run and the incremental record, nothing else (no staging, lease or set moved
    aside), and the run every file in exactly one of predictions and errors, summary.json last."""
    assert sorted(path.name for path in output.iterdir()) == sorted([run_id, "_incremental"])
    run_dir = output / run_id
    summary = json.loads((run_dir / score.SUMMARY_FILE).read_text())
    assert sorted(path.name for path in run_dir.iterdir()) == sorted([*summary["output_files"], score.SUMMARY_FILE])
    scored, errors = read_outcomes(run_dir)
    assert set(scored) | set(errors) == {str(path) for path in files}
    assert summary["matched"] == len(files) == summary["scored"] + summary["failed"]
    return summary


def test_a_run_killed_half_way_resumes_without_scoring_again_what_it_had_committed(tiny_export, tmp_path):
    images, output = tmp_path / "images", tmp_path / "scores"
    files = corpus.write_easy_dataset(images, per_class=150, size=24)
    command = score_command("--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "big",
                            "--files_per_batch", FILES_PER_BATCH)
    staging = output / ".staging-big"
    batches = len(files) // FILES_PER_BATCH
    # 10 ms per file: the run scores for about three seconds, so "half the batches committed" is a moment to catch.
    process = subprocess.Popen(command, cwd=REPO, env=job_env(**{faulty.SLOW_ENV: 0.01}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = _kill_when(process, lambda: len(commit_markers(staging)) >= batches // 2)
    assert process.returncode == -signal.SIGKILL, f"the run ended before half its batches committed: {stderr[-3000:]}"
    finished = _rows_written(staging)  # what the killed attempt had scored, committed or not
    committed = _committed_files(staging)
    assert committed <= len(finished) < len(files)

    score_here("--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "big",
               "--files_per_batch", FILES_PER_BATCH)  # the same command again

    summary = _assert_one_complete_set(output, "big", files)
    assert summary["resumed"] == committed  # the second attempt skipped every committed file ...
    scored_again = len(finished) - summary["resumed"]
    print(f"killed with {committed} of {len(files)} files committed, {len(finished)} written; re-scored "
          f"{scored_again}")
    assert scored_again <= 0.1 * len(finished)  # ... and re-scored at most 10% of what the first had finished


# Where a run can be cut short after scoring: while a batch commits (its marker's temporary file created, not yet
# written), and in the publish, which locally moves the previous set aside, renames staging into place, removes what it
# moved aside; then summary.json is written, then the incremental record.
KILL_POINTS = {
    "while_writing_a_commit_marker": {"kill_after": "os:open:/_committed/:2"},
    "after_the_previous_set_moved_aside": {"kill_after": "os:rename:/scores/r1:1", "previous": True},
    "after_the_new_set_moved_in": {"kill_before": "trainer.storage:write_json:summary.json"},
    "after_summary_before_the_incremental_record": {"kill_before": "beam_pipelines.incremental:save"},
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_while_it_commits_or_publishes_gives_one_complete_set_when_run_again(point, tiny_export, tmp_path):
    images, output = tmp_path / "images", tmp_path / "scores"
    files = corpus.write_easy_dataset(images, per_class=12, size=24)
    (images / "cat" / "broken.jpg").write_bytes(b"not a picture")  # a set has errors files too
    files.append(images / "cat" / "broken.jpg")
    flags = ["--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "r1",
             "--files_per_batch", 5]
    hook = dict(KILL_POINTS[point])
    if hook.pop("previous", False):  # a finished run of the same id, which the killed one was replacing
        score_here(*flags)
        (images / "dog" / "late.jpg").write_bytes((images / "dog" / "0.jpg").read_bytes())
        files.append(images / "dog" / "late.jpg")

    killed = run_job(score_command(*flags, **hook), env=job_env(decoder=None), expect=None)
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr[-3000:]}"

    score_here(*flags)
    _assert_one_complete_set(output, "r1", files)


def test_a_gcs_run_killed_half_way_through_copying_its_set_into_place_gives_one_complete_set(
        gcs_bucket, gcs_emulator_host, tiny_export, tmp_path):
    """On GCS a publish copies objects one by one (there is no rename): a kill in the middle leaves part of a set
    without summary.json, which readers must not take as complete, and the re-run completes it from staging."""
    local = tmp_path / "images"
    files = corpus.write_easy_dataset(local, per_class=10, size=24)
    upload_tree(local, f"{gcs_bucket}/images")
    output = f"{gcs_bucket}/scores"
    flags = ["--model", tiny_export, "--input", f"{gcs_bucket}/images", "--output_dir", output, "--run_id", "r1",
             "--files_per_batch", 3]
    env = job_env(decoder=None, STORAGE_EMULATOR_HOST=gcs_emulator_host, GOOGLE_CLOUD_PROJECT="catsdogs-test")

    killed = run_job(score_command(*flags, kill_after="trainer.storage:copy:/scores/r1/:3"), env=env,
                     expect=None)
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr[-3000:]}"
    published = [ref.path for ref in file_listing.list_files(f"{output}/r1/")]
    assert published and f"{output}/r1/{score.SUMMARY_FILE}" not in published  # part of a set, not marked complete

    score_here(*flags)  # gcs_bucket pointed this process at the same emulator
    names = sorted(ref.path[len(output) + 1:] for ref in file_listing.list_files(f"{output}/")
                   if "/_incremental/" not in ref.path)
    summary = json.loads(storage.read_bytes(f"{output}/r1/{score.SUMMARY_FILE}"))
    assert names == sorted(f"r1/{name}" for name in [*summary["output_files"], score.SUMMARY_FILE])
    rows = [json.loads(line)["path"] for name in summary["output_files"]
            for line in storage.read_bytes(f"{output}/r1/{name}").decode("utf-8").splitlines()]
    assert sorted(rows) == sorted(f"{gcs_bucket}/images/{path.relative_to(local).as_posix()}" for path in files)
    assert summary["resumed"] == len(files)  # the killed run had committed every batch: nothing scored again


def _tree(root) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("point", ["while_writing_shards", "before_moving_latest"])
def test_a_preprocessing_run_killed_before_it_publishes_leaves_the_current_version_and_the_rerun_makes_one(
        point, tmp_path, caplog):
    """A version is complete once its metadata.json exists and current once `latest` names it: a run killed while it
    writes shards, or after metadata.json but before moving `latest`, leaves the current version as it was (the
    trainer reads that one), and the same command again removes the dead run's version and publishes a whole one."""
    from trainer import dataset_contract

    images, output = tmp_path / "images", tmp_path / "data"
    old = corpus.write_easy_dataset(images, per_class=10, size=32)
    flags = ["--input", images, "--output_dir", output, "--image_size", 32, "--files_per_batch", 4,
             "--skip_if_current"]
    preprocess_here(*flags)
    before = _tree(output)
    new = corpus.write_easy_dataset(images, per_class=10, size=32, class_dirs=("cat/more", "dog/more"), seed=5)
    version_dir = output / "v00002"
    if point == "while_writing_shards":
        process = subprocess.Popen(preprocess_command(*flags), cwd=REPO, env=job_env(**{faulty.SLOW_ENV: 0.05}),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr = _kill_when(process, lambda: len(list(version_dir.glob("facts-*.jsonl"))) >= 2)
        returncode = process.returncode
    else:
        killed = run_job(preprocess_command(*flags, kill_before="beam_pipelines.preprocess:publish"),
                         env=job_env(decoder=None), expect=None)
        returncode, stderr = killed.returncode, killed.stderr
        assert (version_dir / dataset_contract.METADATA_FILE).exists()  # complete, but not current
    assert returncode == -signal.SIGKILL, f"the kill point was never reached: {stderr[-3000:]}"
    assert list(version_dir.glob("*.tfrecord"))  # the killed run had written shards ...
    assert {name: data for name, data in _tree(output).items() if not name.startswith(("v00002/", ".lease"))} \
        == before  # ... and nothing else changed: latest still names v00001, whose files are as they were
    assert dataset_contract.locate(str(output), storage.read_bytes, storage.exists)[0] == str(output / "v00001")

    with caplog.at_level("WARNING", logger="beam_pipelines.preprocess"):
        metadata = preprocess_here(*flags)
    assert any("v00002" in message and "did not publish" in message for message in caplog.messages)
    assert metadata["version"] == "v00002" and (metadata["new"], metadata["unchanged"]) == (len(new), len(old))
    assert sorted(path.name for path in output.iterdir()) == ["latest", "v00001", "v00002"]  # no lease left behind
    listed = {name for entry in metadata["batches"]  # what v00002 holds itself (the rest: ../v00001/...)
              for name in [entry["facts"], *(shard["path"] for shard in entry["shards"].values())] if "/" not in name}
    assert sorted(path.name for path in version_dir.iterdir()) == sorted([*listed, "metadata.json"])  # nothing of the
    sources, rejections = read_dataset(output)  # killed run's files is left in the version
    assert set(sources) == {str(path) for path in old + new} and not rejections
