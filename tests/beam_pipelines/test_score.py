"""End-to-end tests of the scoring pipeline: real DirectRunner / DaskRunner, a real exported TF model, real files."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from beam_pipelines import imaging, model_handler, score
from tests.conftest import upload_tree
from tests.corpus import write_easy_dataset, write_odd_files

SIZE = 32
VERSION = "1700000000"


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


def read_predictions(run_dir: Path) -> dict:
    rows = {}
    for shard in sorted(run_dir.glob("predictions-*")):
        with open(shard, newline="", encoding="utf-8") as handle:
            parsed = list(csv.DictReader(handle)) if shard.suffix == ".csv" else [json.loads(line) for line in handle]
        for row in parsed:
            assert row["path"] not in rows, f"{row['path']} predicted twice"
            rows[row["path"]] = row
    return rows


def read_errors(run_dir: Path) -> dict:
    rows = {}
    for shard in sorted(run_dir.glob("errors-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert row["path"] not in rows, f"{row['path']} in errors twice"
            rows[row["path"]] = row
    return rows


@pytest.fixture(scope="module")
def jsonl_run(export_root, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("scores")
    summary = run_score("--model", export_root, "--input", images[0], "--output_dir", output, "--run_id", "first")
    return output / "first", summary


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_mixed_folder_scores_good_files_and_rejects_each_bad_one_with_its_reason(fmt, request, export_root, images,
                                                                                   tmp_path):
    root, expected = images
    if fmt == "jsonl":
        run_dir, summary = request.getfixturevalue("jsonl_run")
    else:
        summary = run_score("--model", export_root, "--input", root, "--output_dir", tmp_path, "--run_id", "csv-run",
                            "--format", "csv")
        run_dir = tmp_path / "csv-run"
    predictions, errors = read_predictions(run_dir), read_errors(run_dir)

    good = {path for path, reason in expected.items() if reason is None}
    assert set(predictions) == good  # exact strings: commas, quotes and non-ASCII survive the round trip
    assert {path: row["reason"] for path, row in errors.items()} == {
        path: reason for path, reason in expected.items() if reason is not None}
    assert all(row["detail"] for row in errors.values())
    assert summary["matched"] == len(expected) == summary["scored"] + summary["failed"]
    assert summary["scored"] == len(good) and summary["skipped"] == 0
    assert sum(summary["class_counts"].values()) == len(good)
    assert summary["failed_by_reason"] == {reason: list(expected.values()).count(reason)
                                           for reason in set(expected.values()) - {None}}
    for row in predictions.values():
        probability = float(row["probability"])
        assert 0.0 <= probability <= 1.0
        assert row["predicted_class"] == ("dog" if probability >= 0.5 else "cat")
        assert (row["model_version"], row["run_id"]) == (VERSION, run_dir.name)
        assert row["scored_at"].endswith("Z")
    assert summary["class_counts"] == {name: sum(r["predicted_class"] == name for r in predictions.values())
                                       for name in ("cat", "dog")}
    folders = {path: Path(path).parent.name.lower().rstrip("s") for path in predictions}
    labelled = [path for path, folder in folders.items() if folder in ("cat", "dog")]
    agree = sum(predictions[path]["predicted_class"] == folders[path] for path in labelled)
    assert 10 <= len(labelled) < len(predictions)  # the easy cat/ and dog/ pictures, not the odd/ zoo's others
    assert summary["folder_labels"] == {"images": len(labelled), "agree": agree,
                                        "accuracy": round(agree / len(labelled), 4)}
    names = sorted(path.name for path in run_dir.iterdir())
    assert names[-1] == "summary.json" and json.loads((run_dir / "summary.json").read_text()) == summary
    assert all(name.startswith(("predictions-", "errors-")) for name in names[:-1])
    assert all(name.endswith("." + fmt) for name in names if name.startswith("predictions-"))
    assert not list(tmp_path.glob(".staging-*"))


def test_probability_equals_serve_pixels_on_the_same_decoded_pixels(jsonl_run, export_root):
    import tensorflow as tf

    run_dir, _ = jsonl_run
    predictions = read_predictions(run_dir)
    paths = sorted(predictions)
    pixels = np.stack([imaging.decode_image(Path(path).read_bytes(), (SIZE, SIZE)).pixels for path in paths])
    model = tf.saved_model.load(str(export_root / VERSION))
    direct = model.signatures["serve_pixels"](pixels=tf.constant(pixels))["probability"].numpy()
    scored = np.array([float(predictions[path]["probability"]) for path in paths])
    assert len(paths) > 10
    np.testing.assert_allclose(scored, direct, rtol=0, atol=1e-6)
    assert {row["predicted_class"] for row in predictions.values()} == {"cat", "dog"}  # the check saw both classes


def test_rerun_replaces_the_run_and_skip_scored_scores_only_new_files(export_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --output_dir and --skip_scored, as a CronJob would pass them
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    first = write_easy_dataset(inputs, per_class=4, size=40, seed=1)
    flags = ["--model", export_root, "--input", inputs, "--output_dir", "scores"]

    run_score(*flags, "--run_id", "r1", "--num_shards", "3")
    summary = run_score(*flags, "--run_id", "r1", "--num_shards", "2")
    shards = sorted(path.name for path in (output / "r1").glob("predictions-*"))
    assert shards == ["predictions-00000-of-00002.jsonl", "predictions-00001-of-00002.jsonl"]
    assert set(read_predictions(output / "r1")) == {str(path) for path in first}
    assert summary["scored"] == len(first)
    assert sorted(path.name for path in output.iterdir()) == ["r1"]

    (inputs / "later").mkdir()
    new = [inputs / "later" / "a.png", inputs / "later" / "b, c.jpg"]
    for path, source in zip(new, first[:2], strict=True):
        shutil.copy(source, path)
    for _ in range(2):  # the second pass re-runs r2: its own earlier output must not count as scored
        summary = run_score(*flags, "--run_id", "r2", "--skip_scored", "scores")
        assert (summary["matched"], summary["scored"], summary["skipped"]) == (len(first) + 2, 2, len(first))
        assert set(read_predictions(output / "r2")) == {str(path) for path in new}
    union = set(read_predictions(output / "r1")) | set(read_predictions(output / "r2"))
    assert union == {str(path) for path in first + new}


def test_skip_scored_reads_csv_rows_and_rescores_files_of_another_model_version(export_root, tmp_path):
    inputs, output = tmp_path / "incoming", tmp_path / "scores"
    files = write_easy_dataset(inputs, per_class=2, size=40)
    run_score("--model", export_root, "--input", inputs, "--output_dir", output, "--run_id", "old", "--format", "csv")
    other_root = tmp_path / "export"
    shutil.copytree(export_root / VERSION, other_root / "1800000000")
    info_path = other_root / "1800000000" / "model_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "model_version": "1800000000"}))
    summary = run_score("--model", other_root / "1800000000", "--input", inputs, "--output_dir", output,
                        "--run_id", "new", "--skip_scored", str(output / "old" / "predictions-*.csv"))
    assert (summary["scored"], summary["skipped"]) == (len(files), 0)
    summary = run_score("--model", export_root, "--input", inputs, "--output_dir", output, "--run_id", "again",
                        "--skip_scored", str(output / "old" / "predictions-*.csv"))
    assert (summary["scored"], summary["skipped"]) == (0, len(files))  # the CSV rows were read back


def test_gcs_images_model_and_outputs_through_the_emulator(gcs_bucket, export_root, tmp_path):
    from apache_beam.io.filesystems import FileSystems

    local = tmp_path / "images"
    files = write_easy_dataset(local / "pets", per_class=3, size=40)
    (local / "pets" / "odd, name ü.jpg").write_bytes(files[0].read_bytes())
    (local / "pets" / "broken.jpg").write_bytes(b"not a picture at all")
    upload_tree(local, f"{gcs_bucket}/images")
    upload_tree(export_root, f"{gcs_bucket}/models/export")  # the version directory and `latest`
    output = f"{gcs_bucket}/scores"

    summary = run_score("--model", f"{gcs_bucket}/models/export", "--input", f"{gcs_bucket}/images/pets",
                        "--output_dir", output, "--run_id", "cloud", "--format", "csv",
                        "--allowed_model_prefix", f"{gcs_bucket}/models/")
    assert summary["model"] == f"{gcs_bucket}/models/export/{VERSION}"
    assert (summary["matched"], summary["scored"], summary["failed"]) == (len(files) + 2, len(files) + 1, 1)
    listing = {m.path for m in FileSystems.match([f"{output}/cloud/*"])[0].metadata_list}
    assert f"{output}/cloud/summary.json" in listing
    [shard] = [path for path in listing if "/predictions-" in path]
    with FileSystems.open(shard) as handle:
        rows = list(csv.DictReader(handle.read().decode("utf-8").splitlines(keepends=True)))
    assert {row["path"] for row in rows} == {f"{gcs_bucket}/images/pets/{p.relative_to(local / 'pets').as_posix()}"
                                             for p in files} | {f"{gcs_bucket}/images/pets/odd, name ü.jpg"}
    [errors] = [path for path in listing if "/errors-" in path]
    with FileSystems.open(errors) as handle:
        [error] = [json.loads(line) for line in handle.read().decode("utf-8").splitlines()]
    assert (error["path"], error["reason"]) == (f"{gcs_bucket}/images/pets/broken.jpg", imaging.NOT_AN_IMAGE)
    assert not any(".staging-" in path for path in {m.path for m in FileSystems.match([f"{output}/**"])[0]
                                                    .metadata_list})


def test_dask_runner_on_a_two_worker_cluster_gives_the_direct_runner_predictions(jsonl_run, export_root, images,
                                                                                   tmp_path):
    from dask.distributed import LocalCluster

    direct_dir, _ = jsonl_run
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        summary = run_score("--model", export_root, "--input", images[0], "--output_dir", tmp_path,
                            "--run_id", "dask", "--dask_client_address", cluster.scheduler_address,
                            runner="DaskRunner")
    direct, dask = read_predictions(direct_dir), read_predictions(tmp_path / "dask")
    assert set(dask) == set(direct) and summary["scored"] == len(direct)
    for path, row in dask.items():
        assert abs(float(row["probability"]) - float(direct[path]["probability"])) <= 1e-6
        assert row["predicted_class"] == direct[path]["predicted_class"]
    assert {p: r["reason"] for p, r in read_errors(tmp_path / "dask").items()} == {
        p: r["reason"] for p, r in read_errors(direct_dir).items()}


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
    assert message in str(failure.value.code) and "--model" in str(failure.value.code)
    assert not (tmp_path / "scores").exists()  # nothing was scored or written


@pytest.mark.parametrize(("flags", "message"), [
    (["--max_batchsize", "64"], "did you mean --max_batch_size"),
    (["--min_batch_size", "64", "--max_batch_size", "8"], "raise --max_batch_size"),
    (["--allowed_model_prefix", "/somewhere/else"], "outside --allowed_model_prefix"),
])
def test_a_wrong_flag_fails_at_launch_saying_what_to_do(flags, message, export_root, images, tmp_path):
    with pytest.raises(SystemExit) as failure:
        run_score("--model", export_root, "--input", images[0], "--output_dir", tmp_path / "scores", *flags)
    assert message in str(failure.value.code)
    assert not (tmp_path / "scores").exists()


def test_too_many_rejected_files_fail_the_job_but_keep_the_outputs(export_root, images, tmp_path):
    root, expected = images
    with pytest.raises(SystemExit) as failure:
        run_score("--model", export_root, "--input", root / "odd" / "dog", "--output_dir", tmp_path,
                  "--run_id", "bad", "--max_error_rate", "0.2")
    assert "--max_error_rate" in str(failure.value.code)
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"].startswith("failed") and summary["error_rate"] > 0.2
    bad = {path for path, reason in expected.items() if reason is not None}
    assert set(read_errors(tmp_path / "bad")) == bad
    assert len(read_predictions(tmp_path / "bad")) == summary["scored"] > 0


def test_progress_is_logged_with_files_done_and_rate(monkeypatch, caplog):
    monkeypatch.setattr(score, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(score.ReportProgressFn, "_state",
                        {"done": 0, "scored": 0, "failed": 0, "start": None, "last": None})
    progress = score.ReportProgressFn()
    with caplog.at_level("WARNING", logger=score.__name__):
        passed = [key for key in ("listed", "scored", "failed:truncated", "scored", "class:cat")
                  for key in progress.process(key)]
    assert passed == ["listed", "scored", "failed:truncated", "scored", "class:cat"]
    assert "3 files done (2 scored, 1 failed)" in caplog.text and "files/s" in caplog.text


def test_build_alone_runs_in_a_test_pipeline_and_counts_outcomes_in_beam_counters(export_root, images, tmp_path):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    root, expected = images
    model_dir = str(export_root / VERSION)
    options = PipelineOptions(["--runner", "DirectRunner", "--model", model_dir, "--input", str(root),
                               "--output_dir", str(tmp_path), "--run_id", "built"])
    pipeline = TestPipeline(options=options)
    outputs = score.build(pipeline, options, model_handler.check_model(model_dir))
    bad = [(path, reason) for path, reason in expected.items() if reason is not None]
    assert_that(outputs["errors"] | beam.Map(lambda row: (row["path"], row["reason"])), equal_to(bad),
                label="CheckErrors")
    assert_that(outputs["predictions"] | beam.Map(lambda row: row["path"]),
                equal_to([path for path, reason in expected.items() if reason is None]), label="CheckPredictions")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(score.NAMESPACE))["counters"]}
    assert counters["matched"] == len(expected)
    assert counters["scored"] == len(expected) - len(bad)
    assert counters["class_cat"] + counters["class_dog"] == counters["scored"]
    assert {name[len("failed_"):]: n for name, n in counters.items() if name.startswith("failed_")} == {
        reason: [r for _, r in bad].count(reason) for reason in {r for _, r in bad}}


@pytest.mark.parametrize("left_out", ["--model", "--input", "--output_dir"])
def test_a_missing_required_flag_fails_at_launch_naming_it(left_out, tmp_path):
    flags = {"--model": tmp_path / "export", "--input": tmp_path, "--output_dir": tmp_path / "scores"}
    del flags[left_out]
    with pytest.raises(SystemExit) as failure:
        run_score(*[item for pair in flags.items() for item in pair])
    assert f"missing {left_out}" in str(failure.value.code) and "--help" in str(failure.value.code)
    assert not (tmp_path / "scores").exists()
