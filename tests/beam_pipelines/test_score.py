"""The scoring pipeline end to end and stage by stage: real DirectRunner / DaskRunner, a real exported TF model, real
files, the GCS emulator, and the Dataflow runner's job graph (dry run)."""

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from beam_pipelines import file_listing, imaging, incremental, lifecycle, listing, model_handler, options, score
from tests.conftest import upload_tree
from tests.corpus import write_easy_dataset, write_odd_files
from trainer import storage

SIZE = 32
VERSION = "1700000000"
PROBABILITY = "dog_probability"


def tiny_model(seed: int = 3):
    """A small untrained CNN (random weights, spread out so both classes occur)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 3))(x)
    return keras.Model(inputs, outputs)


def export_tiny_model(export_root: Path, version: str = VERSION, seed: int = 3, model=None) -> str:
    """model (default tiny_model(seed)) exported through trainer/export.py."""
    from trainer import export

    return export.export_model(model or tiny_model(seed), str(export_root), class_names=["cat", "dog"],
                               input_size=[SIZE, SIZE], model_name="tiny-test", version=version)


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model") / "export"
    export_tiny_model(root)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of the odd-file zoo plus easy stripes pictures: (root, {path: expected reason or None})."""
    root = tmp_path_factory.mktemp("images")
    expected = {str(path): reason for path, reason in write_odd_files(root / "odd").items()}
    expected.update({str(path): None for path in write_easy_dataset(root / "easy", per_class=5, size=48)})
    return root, expected


def run_score(*flags, runner="DirectRunner"):
    return score.run(["--runner", runner, *[str(flag) for flag in flags]])


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_predictions(run_dir: Path) -> dict:
    rows = {}
    for shard in sorted(run_dir.glob("predictions-*")):
        for row in read_rows(shard):
            assert row["path"] not in rows, f"{row['path']} predicted twice"
            rows[row["path"]] = row
    return rows


def read_errors(run_dir: Path) -> dict:
    rows = {}
    for shard in sorted(run_dir.glob("errors-*.jsonl")):
        for row in read_rows(shard):
            assert row["path"] not in rows, f"{row['path']} in errors twice"
            rows[row["path"]] = row
    return rows


@pytest.fixture(scope="module")
def jsonl_run(export_root, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("scores")
    summary = run_score("--model", export_root, "--input", images[0], "--output_dir", output, "--run_id", "first",
                        "--files_per_batch", 7)
    return output / "first", summary


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_mixed_folder_scores_good_files_and_rejects_each_bad_one_with_its_reason(fmt, request, export_root, images,
                                                                                   tmp_path):
    root, expected = images
    if fmt == "jsonl":
        run_dir, summary = request.getfixturevalue("jsonl_run")
    else:
        summary = run_score("--model", export_root, "--input", root, "--output_dir", tmp_path, "--run_id", "other",
                            "--format", fmt, "--files_per_batch", 7)
        run_dir = tmp_path / "other"
    predictions, errors = read_predictions(run_dir), read_errors(run_dir)

    good = {path for path, reason in expected.items() if reason is None}
    assert set(predictions) == good  # exact strings: commas, quotes and non-ASCII survive the round trip
    assert {path: row["reason"] for path, row in errors.items()} == {
        path: reason for path, reason in expected.items() if reason is not None}
    assert all(row["detail"] for row in errors.values())
    assert summary["matched"] == len(expected) == summary["scored"] + summary["failed"]
    assert summary["scored"] == len(good) and summary["skipped"] == summary["resumed"] == 0
    assert summary["failed_by_reason"] == {reason: list(expected.values()).count(reason)
                                           for reason in set(expected.values()) - {None}}
    for row in predictions.values():
        probability = float(row[PROBABILITY])
        assert 0.0 <= probability <= 1.0
        assert row["predicted_class"] == ("dog" if probability >= 0.5 else "cat")
        assert float(row["confidence"]) == pytest.approx(max(probability, 1 - probability))
        assert int(row["model_version"]) == int(VERSION) and row["run_id"] == run_dir.name
        assert row["scored_at"].endswith("Z")
        if fmt != "csv":  # stable types where the format has types
            assert isinstance(row["model_version"], int) and isinstance(row[PROBABILITY], float)
    assert summary["class_counts"] == {name: sum(r["predicted_class"] == name for r in predictions.values())
                                       for name in ("cat", "dog")}
    assert sum(summary["probability_histogram"]["counts"]) == len(good)
    contract = score.predictions
    assert summary["row_schema"] == {"version": contract.ROW_SCHEMA_VERSION,
                                     "fields": list(contract.row_fields(["cat", "dog"]))}
    folders = {path: Path(path).parent.name.lower().rstrip("s") for path in predictions}
    labelled = [path for path, folder in folders.items() if folder in ("cat", "dog")]
    agree = sum(predictions[path]["predicted_class"] == folders[path] for path in labelled)
    assert 10 <= len(labelled) < len(predictions)  # the easy cat/ and dog/ pictures, not the odd/ zoo's others
    assert summary["folder_labels"] == {"images": len(labelled), "agree": agree,
                                        "accuracy": round(agree / len(labelled), 4)}
    names = sorted(path.name for path in run_dir.iterdir())
    assert names[-1] == "summary.json" and json.loads((run_dir / "summary.json").read_text()) == summary
    assert all(name.startswith(("predictions-", "errors-")) for name in names[:-1])
    assert len(names) - 1 == len(summary["output_files"]) > 4  # one file per batch of 7, not one per run
    assert all(name.endswith("." + fmt) for name in names if name.startswith("predictions-"))
    assert not list(run_dir.parent.glob(".staging-*")) and not list(run_dir.parent.glob(".lease-*"))


def test_probability_equals_serve_pixels_on_the_same_decoded_pixels(jsonl_run, export_root):
    import tensorflow as tf

    run_dir, _ = jsonl_run
    predictions = read_predictions(run_dir)
    paths = sorted(predictions)
    pixels = np.stack([imaging.decode_image(Path(path).read_bytes(), (SIZE, SIZE)).pixels for path in paths])
    model = tf.saved_model.load(str(export_root / VERSION))
    direct = model.signatures["serve_pixels"](pixels=tf.constant(pixels))["probability"].numpy()
    scored = np.array([float(predictions[path][PROBABILITY]) for path in paths])
    assert len(paths) > 10
    np.testing.assert_allclose(scored, direct, rtol=0, atol=1e-6)
    assert {row["predicted_class"] for row in predictions.values()} == {"cat", "dog"}  # the check saw both classes


def test_rerun_replaces_the_run_and_skip_scored_scores_only_new_files(export_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --output_dir and --skip_scored, as a CronJob would pass them
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    first = write_easy_dataset(inputs, per_class=4, size=40, seed=1)
    flags = ["--model", export_root, "--input", inputs, "--output_dir", "scores", "--files_per_batch", 3]

    run_score(*flags, "--run_id", "r1", "--format", "csv")
    summary = run_score(*flags, "--run_id", "r1")  # a re-run of a finished run id replaces it whole
    assert sorted({path.suffix for path in (output / "r1").glob("predictions-*")}) == [".jsonl"]
    assert set(read_predictions(output / "r1")) == {str(path) for path in first}
    assert summary["scored"] == len(first)
    assert sorted(path.name for path in output.iterdir()) == ["_incremental", "r1"]

    (inputs / "later").mkdir()
    new = [inputs / "later" / "a.png", inputs / "later" / "b, c.jpg"]
    for path, source in zip(new, first[:2], strict=True):
        shutil.copy(source, path)
    summary = run_score(*flags, "--run_id", "r2", "--skip_scored", "scores")
    assert (summary["matched"], summary["scored"], summary["skipped"]) == (len(first) + 2, 2, len(first))
    assert set(read_predictions(output / "r2")) == {str(path) for path in new}
    summary = run_score(*flags, "--run_id", "r3", "--skip_scored", "scores")  # nothing new since r2
    assert (summary["scored"], summary["skipped"]) == (0, len(first) + 2)
    union = set(read_predictions(output / "r1")) | set(read_predictions(output / "r2"))
    assert union == {str(path) for path in first + new}


def test_skip_scored_keeps_one_record_per_model_version_and_rescores_for_a_new_one(export_root, tmp_path):
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    files = write_easy_dataset(inputs, per_class=2, size=40)
    run_score("--model", export_root, "--input", inputs, "--output_dir", output, "--run_id", "old")
    other_root = tmp_path / "export"
    export_tiny_model(other_root, version="1800000000", seed=4)
    summary = run_score("--model", other_root, "--input", inputs, "--output_dir", output, "--run_id", "new",
                        "--skip_scored", output)
    assert (summary["scored"], summary["skipped"]) == (len(files), 0)
    summary = run_score("--model", export_root, "--input", inputs, "--output_dir", output, "--run_id", "again",
                        "--skip_scored", output)
    assert (summary["scored"], summary["skipped"]) == (0, len(files))
    assert sorted(p.name for p in (output / incremental.STATE_DIR).glob("*.json")) == [
        "model-1700000000.json", "model-1800000000.json"]


def test_a_file_whose_content_changes_is_scored_again_and_a_new_hard_link_to_old_content_once(export_root, tmp_path):
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    files = write_easy_dataset(inputs, per_class=3, size=40)
    flags = ["--model", export_root, "--input", inputs, "--output_dir", output, "--skip_scored", output]
    run_score(*flags, "--run_id", "r1")
    time.sleep(0.01)
    files[0].write_bytes(files[1].read_bytes())  # new content under an old name (and a new modification time)
    os.link(files[2], inputs / "cat" / "linked.jpg")  # an old picture under a new name (bumps its inode's ctime)
    summary = run_score(*flags, "--run_id", "r2")
    assert set(read_predictions(output / "r2")) == {str(files[0]), str(inputs / "cat" / "linked.jpg")}
    assert summary["skipped"] == len(files) - 1


def test_gcs_images_model_and_outputs_through_the_emulator(gcs_bucket, export_root, tmp_path):
    local = tmp_path / "images"
    files = write_easy_dataset(local / "pets", per_class=3, size=40)
    (local / "pets" / "odd, name ü.jpg").write_bytes(files[0].read_bytes())
    (local / "pets" / "broken.jpg").write_bytes(b"not a picture at all")
    upload_tree(local, f"{gcs_bucket}/images")
    upload_tree(export_root, f"{gcs_bucket}/models/export")  # the version directory and `latest`
    output = f"{gcs_bucket}/scores"

    flags = ["--model", f"{gcs_bucket}/models/export", "--input", f"{gcs_bucket}/images/pets", "--output_dir", output,
             "--format", "csv", "--allowed_model_prefix", f"{gcs_bucket}/models/", "--skip_scored", output,
             "--files_per_batch", 3]
    summary = run_score(*flags, "--run_id", "cloud")
    assert summary["model"] == f"{gcs_bucket}/models/export/{VERSION}"
    assert (summary["matched"], summary["scored"], summary["failed"]) == (len(files) + 2, len(files) + 1, 1)
    names = {ref.path for ref in file_listing.list_files(f"{output}/cloud/")}
    assert f"{output}/cloud/summary.json" in names
    rows = [row for path in names if "/predictions-" in path
            for row in csv.DictReader(storage.read_bytes(path).decode("utf-8").splitlines(keepends=True))]
    assert sorted(row["path"] for row in rows) == sorted(
        {f"{gcs_bucket}/images/pets/{p.relative_to(local / 'pets').as_posix()}" for p in files}
        | {f"{gcs_bucket}/images/pets/odd, name ü.jpg"})
    [errors] = [path for path in names if "/errors-" in path]
    [error] = [json.loads(line) for line in storage.read_bytes(errors).decode("utf-8").splitlines()]
    assert (error["path"], error["reason"]) == (f"{gcs_bucket}/images/pets/broken.jpg", imaging.NOT_AN_IMAGE)
    assert not any(".staging-" in ref.path or ".lease-" in ref.path for ref in file_listing.list_files(f"{output}/"))

    upload_tree(local / "pets" / "cat", f"{gcs_bucket}/images/pets/later")
    summary = run_score(*flags, "--run_id", "cloud-2")  # the incremental record works through GCS too
    assert (summary["scored"], summary["skipped"]) == (3, len(files) + 2)


def test_dask_runner_on_a_two_worker_cluster_gives_the_direct_runner_predictions(jsonl_run, export_root, images,
                                                                                   tmp_path):
    from dask.distributed import LocalCluster

    direct_dir, _ = jsonl_run
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        summary = run_score("--model", export_root, "--input", images[0], "--output_dir", tmp_path,
                            "--run_id", "dask", "--dask_client_address", cluster.scheduler_address,
                            "--files_per_batch", 7, runner="DaskRunner")
    direct, dask = read_predictions(direct_dir), read_predictions(tmp_path / "dask")
    assert set(dask) == set(direct) and summary["scored"] == len(direct)
    for path, row in dask.items():
        assert abs(float(row[PROBABILITY]) - float(direct[path][PROBABILITY])) <= 1e-6
        assert row["predicted_class"] == direct[path]["predicted_class"]
    assert {p: r["reason"] for p, r in read_errors(tmp_path / "dask").items()} == {
        p: r["reason"] for p, r in read_errors(direct_dir).items()}


def test_the_dataflow_job_graph_has_one_element_per_batch_and_no_per_file_shuffle(export_root, images, tmp_path):
    """DataflowRunner with --dry_run=True builds the real Dataflow job (Beam's own way to test that runner) without
    submitting it."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    argv = ["--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--project", "catsdogs-test", "--region",
            "us-central1", "--temp_location", "gs://catsdogs-test-beam/tmp", "--sdk_location=container",
            "--sdk_container_image", "us-docker.pkg.dev/catsdogs-test/catsdogs/catsdogs-cpu:abc123",
            "--model", str(export_root / VERSION), "--input", str(images[0]), "--output_dir", str(tmp_path),
            "--run_id", "dry"]
    pipeline_options = PipelineOptions(argv)
    config = options.score_config(pipeline_options)
    info = model_handler.check_model(config.model)
    plan = score.plan_run(config, info, "DataflowRunner", 0)
    pipeline = beam.Pipeline(options=pipeline_options)
    score.build(pipeline, config, info, plan)
    result = pipeline.run()
    job = result.job
    transforms = job.proto_pipeline.components.transforms
    top = {t.unique_name for t in transforms.values() if "/" not in t.unique_name}
    assert {"ListImages", "Score", "CommitBatches", "CountOutcomes", "WriteCounts"} <= top
    shuffles = sorted(t.unique_name for t in transforms.values()
                      if t.spec.urn == "beam:transform:group_by_key:v1")
    # One shuffle spreads the batches of paths, one sums the per-batch tallies: nothing per image, no pixels.
    assert len(shuffles) == 2 and shuffles[0].startswith("CountOutcomes/") and shuffles[1].startswith("ListImages/")
    assert "catsdogs-cpu:abc123" in str(job.proto_pipeline.components.environments)
    assert not list(tmp_path.glob("first*"))  # nothing ran


def _break_missing_info(version_dir: Path):
    (version_dir / "model_info.json").unlink()


def _break_checksum(version_dir: Path):
    with open(version_dir / "saved_model.pb", "ab") as handle:
        handle.write(b"\0")


def _break_class_count(version_dir: Path):
    info = json.loads((version_dir / "model_info.json").read_text())
    (version_dir / "model_info.json").write_text(json.dumps({**info, "class_names": ["cat", "dog", "bird"]}))


@pytest.mark.parametrize(("damage", "message"), [
    (_break_missing_info, "has no model_info.json"),
    (_break_checksum, "saved_model.pb has sha256"),
    (_break_class_count, "class_names must be two distinct names"),
])
def test_a_wrong_model_fails_at_launch_with_a_clear_message(damage, message, export_root, images, tmp_path):
    model = tmp_path / "export"
    shutil.copytree(export_root, model)
    damage(model / VERSION)
    with pytest.raises(SystemExit) as failure:
        run_score("--model", model, "--input", images[0], "--output_dir", tmp_path / "scores")
    assert message in str(failure.value) and "--model" in str(failure.value)
    assert failure.value.code == 2
    assert not (tmp_path / "scores").exists()  # nothing was scored or written


@pytest.mark.parametrize(("flags", "message"), [
    (["--max_batchsize", "64"], "did you mean --max_batch_size"),
    (["--max_batch", "64"], "did you mean --max_batch_size"),  # no abbreviations
    (["--max_batch_size", "0"], "--max_batch_size must be between 1 and 4096"),
    (["--format", "xml"], "see the message above"),
    (["--allowed_model_prefix", "/somewhere/else"], "outside --allowed_model_prefix"),
])
def test_a_wrong_flag_fails_at_launch_with_exit_code_2_saying_what_to_do(flags, message, export_root, images,
                                                                         tmp_path):
    with pytest.raises(SystemExit) as failure:
        run_score("--model", export_root, "--input", images[0], "--output_dir", tmp_path / "scores", *flags)
    assert message in str(failure.value) and failure.value.code == 2
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("left_out", ["--model", "--input", "--output_dir"])
def test_a_missing_required_flag_fails_at_launch_naming_it(left_out, tmp_path):
    flags = {"--model": tmp_path / "export", "--input": tmp_path, "--output_dir": tmp_path / "scores"}
    del flags[left_out]
    with pytest.raises(SystemExit) as failure:
        run_score(*[item for pair in flags.items() for item in pair])
    assert f"no {left_out} given" in str(failure.value) and failure.value.code == 2
    assert not (tmp_path / "scores").exists()


def test_too_many_rejected_files_fail_the_job_but_keep_the_outputs(export_root, images, tmp_path):
    root, expected = images
    with pytest.raises(SystemExit) as failure:
        run_score("--model", export_root, "--input", root / "odd" / "dog", "--output_dir", tmp_path,
                  "--run_id", "bad", "--max_error_rate", "0.2", "--skip_scored", tmp_path)
    assert "--max_error_rate" in str(failure.value) and failure.value.code == 1
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"].startswith("failed") and summary["error_rate"] > 0.2
    bad = {path for path, reason in expected.items() if reason is not None and "/odd/dog/" in path}
    assert set(read_errors(tmp_path / "bad")) == bad
    assert len(read_predictions(tmp_path / "bad")) == summary["scored"] > 0
    assert not (tmp_path / incremental.STATE_DIR).exists()  # a failed run does not vouch for its files


def test_a_second_run_with_the_same_run_id_is_refused_while_the_first_holds_its_lease(export_root, images, tmp_path):
    holder = lifecycle.Lease(str(tmp_path / ".lease-busy.json"), what="run id busy")
    with holder, pytest.raises(SystemExit) as failure:
        run_score("--model", export_root, "--input", images[0], "--output_dir", tmp_path, "--run_id", "busy")
    assert failure.value.code == lifecycle.EXIT_LEASE_HELD and "another run holds run id busy" in str(failure.value)
    assert not (tmp_path / "busy").exists() and not (tmp_path / ".staging-busy").exists()


def test_progress_and_drift_are_logged(export_root, tmp_path, caplog, monkeypatch):
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    write_easy_dataset(inputs, per_class=6, size=40, class_dirs=("cat", "dog"))
    flags = ["--model", export_root, "--output_dir", output, "--skip_scored", output, "--files_per_batch", 2]
    monkeypatch.setattr(lifecycle, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("INFO"):
        first = run_score(*flags, "--input", inputs / "cat", "--run_id", "cats")
        second = run_score(*flags, "--input", inputs / "dog", "--run_id", "dogs", "--drift_threshold", "0.01")
    assert "files done" in caplog.text and "files/s" in caplog.text  # the workers' progress lines
    assert first["drift"] is None  # nothing to compare with
    assert second["drift"]["previous_run"] == "cats"
    assert second["drift"]["drifted"] == (second["class_shares"] != first["class_shares"])
    if second["drift"]["drifted"]:
        assert "class shares drifted" in caplog.text


def test_build_alone_runs_in_a_test_pipeline_and_counts_outcomes(export_root, images, tmp_path):
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    root, expected = images
    model_dir = str(export_root / VERSION)
    pipeline_options = PipelineOptions(["--runner", "DirectRunner", "--model", model_dir, "--input", str(root),
                                        "--output_dir", str(tmp_path), "--files_per_batch", "5"])
    config = dataclasses.replace(options.score_config(pipeline_options), run_id="built")
    info = model_handler.check_model(model_dir)
    plan = score.plan_run(config, info, "DirectRunner", 0)
    pipeline = TestPipeline(options=pipeline_options)
    tally = score.build(pipeline, config, info, plan)
    bad = [reason for reason in expected.values() if reason is not None]

    def check(tallies):
        [written] = tallies
        assert written is None  # WriteCounts wrote the merged tally into the staging dir

    assert_that(tally, check, label="CheckWritten")
    result = pipeline.run()
    result.wait_until_finish()
    counts = storage.read_json(str(tmp_path / ".staging-built" / score.COUNTS_FILE))["counts"]
    assert counts[listing.LISTED] == len(expected) and counts["scored"] == len(expected) - len(bad)
    assert {key[len("failed:"):]: n for key, n in counts.items() if key.startswith("failed:")} == {
        reason: bad.count(reason) for reason in set(bad)}
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(score.NAMESPACE))["counters"]}
    assert counters["scored"] == counts["scored"]
    assert counters["class_cat"] + counters["class_dog"] == counters["scored"]
    markers = list((tmp_path / ".staging-built" / score.predictions.COMMITTED).iterdir())
    assert len(markers) == sum(1 for _ in (tmp_path / ".staging-built").glob("predictions-*")) >= len(expected) // 5
