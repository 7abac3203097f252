"""The preprocessing job end to end on real runners (DirectRunner in both modes, DaskRunner, GCS emulator, the
Dataflow job graph), and datasets that grow: versions, photos that keep their split, `latest` never half-moved."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from beam_pipelines import file_listing, imaging, preprocess, records, tfrecords
from tests import corpus
from tests.conftest import upload_tree
from trainer import dataset_contract, features, storage


def _args(inputs, output_dir, *extra):
    return [*(f"--input={path}" for path in inputs), f"--output_dir={output_dir}", "--runner=DirectRunner", *extra]


def _version(output_dir) -> tuple[str, dict]:
    return dataset_contract.locate(str(output_dir), storage.read_bytes, storage.exists)


def _records(output_dir):
    """{split: {image id: (label, class name, source, decoded shape)}} of the current version, read with TensorFlow
    from exactly the shards its metadata lists."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], dtype) for key, dtype in (
        (features.IMAGE_KEY, tf.string), (features.LABEL_KEY, tf.int64), (features.CLASS_KEY, tf.string),
        (features.ID_KEY, tf.string), (features.SOURCE_KEY, tf.string))}
    version_dir, metadata = _version(output_dir)
    out = {}
    for split in features.SPLITS:
        shards = dataset_contract.split_shards(metadata, version_dir, split)
        out[split] = {}
        for path, count in shards:
            # TensorFlow's own gs:// does not go through the emulator: read those bytes with our own reader
            parsed_records = (list(tf.data.TFRecordDataset(path)) if not storage.is_remote(path)
                              else tfrecords.decode(storage.read_bytes(path)))
            assert len(parsed_records) == count, path
            for raw in parsed_records:
                parsed = tf.io.parse_single_example(raw, spec)
                shape = tuple(tf.io.decode_jpeg(parsed[features.IMAGE_KEY]).shape)
                out[split][parsed[features.ID_KEY].numpy().decode()] = (
                    int(parsed[features.LABEL_KEY]), parsed[features.CLASS_KEY].numpy().decode(),
                    parsed[features.SOURCE_KEY].numpy().decode(), shape)
    return out


def _split_of_source(output_dir) -> dict:
    return {record[2]: split for split, ids in _records(output_dir).items() for record in ids.values()}


def _rejections(output_dir):
    version_dir, _ = _version(output_dir)
    lines = []
    for ref in file_listing.list_files(storage.join(version_dir, "rejected-*.jsonl")):
        lines += [json.loads(line) for line in storage.read_bytes(ref.path).decode().splitlines() if line]
    return {line["path"]: line for line in lines}


def _jpeg(pixels, quality):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    corpus.write_easy_dataset(root, per_class=12, size=48)
    expected = corpus.write_odd_files(root)
    (root / "unlabelled").mkdir()
    (root / "unlabelled" / "bird.jpg").write_bytes(corpus.encode(corpus.easy_pixels(0, 555, 48)))
    return root, expected


def _photo_copies(seed: int) -> dict:
    """A photo-like picture and its copies: byte-identical, re-encoded at other qualities, slightly resized."""
    pixels = corpus.photo_pixels(seed, size=96)
    label = ("cat", "dog")[seed % 2]
    original = _jpeg(pixels, 92)
    resized = np.asarray(Image.fromarray(pixels).resize((90, 90), Image.Resampling.BILINEAR))
    return {
        f"{label}/{seed}.jpg": original,
        f"{label}s/other/copy-{seed}.jpg": original,  # exact copy elsewhere
        f"{label.upper()}/q70-{seed}.jpg": _jpeg(pixels, 70),
        f"{label}/more/q50-{seed}.jpg": _jpeg(pixels, 50),
        f"{label}/small-{seed}.png": corpus.encode(resized, "PNG"),
    }


def _write(root, files: dict) -> list[str]:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return [str(root / relative) for relative in files]


@pytest.fixture(scope="module")
def duplicates_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    groups = {seed: _write(root, _photo_copies(seed)) for seed in range(8)}
    return root, groups


@pytest.fixture(scope="module")
def corpus_run(corpus_dir, tmp_path_factory):
    root, _ = corpus_dir
    output_dir = tmp_path_factory.mktemp("out") / "dataset"
    metadata = preprocess.run(_args([root], output_dir, "--image_size=32", "--files_per_batch=9"))
    return output_dir, metadata


def test_every_file_is_accounted_for_and_records_parse(corpus_dir, corpus_run):
    root, expected = corpus_dir
    output_dir, metadata = corpus_run
    listed = [p for p in root.rglob("*") if p.is_file()]
    assert metadata["read"] == metadata["listed"] == len(listed)
    assert metadata["read"] == metadata["written"] + metadata["duplicates"] + sum(metadata["rejected"].values())

    rejections = _rejections(output_dir)
    for path, reason in expected.items():
        if reason is not None:
            assert rejections[str(path)]["reason"] == reason, path
            assert rejections[str(path)]["detail"]
        else:
            assert str(path) not in rejections, rejections.get(str(path))
    assert rejections[str(root / "unlabelled" / "bird.jpg")]["reason"] == records.NO_LABEL
    assert sum(metadata["rejected"].values()) == len(rejections)

    by_split = _records(output_dir)
    written = {image_id: record for split in by_split.values() for image_id, record in split.items()}
    assert len(written) == metadata["written"]
    for split in features.SPLITS:
        assert metadata["counts"][split]["total"] == len(by_split[split])
    sources = {record[2]: record for record in written.values()}
    for path in listed:
        if str(path) in sources:
            label, class_name, _, shape = sources[str(path)]
            assert shape == (32, 32, 3)
            assert class_name == features.DEFAULT_CLASS_NAMES[label]
            assert class_name == ("dog" if "dog" in str(path.relative_to(root)) else "cat"), path
    assert sorted(p.name for p in output_dir.iterdir()) == ["latest", "v00001"]
    assert metadata["options"]["image_size"] == 32 and metadata["code_version"]
    assert metadata["history"] == [{**metadata["history"][0], "version": "v00001", "added": metadata["written"]}]
    listed_files = {p.name for p in (output_dir / "v00001").iterdir()}
    referenced = {shard["path"] for shards in metadata["shards"].values() for shard in shards}
    assert {name for name in listed_files if name.endswith(".tfrecord")} == referenced  # no stray shard


def test_split_is_deterministic_and_copies_stay_together(duplicates_dir, tmp_path):
    root, groups = duplicates_dir
    first = preprocess.run(_args([root], tmp_path / "a", "--files_per_batch=7"))
    second = preprocess.run(_args([root], tmp_path / "b", "--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2"))
    split_a = {i: s for s, ids in _records(tmp_path / "a").items() for i in ids}
    split_b = {i: s for s, ids in _records(tmp_path / "b").items() for i in ids}
    assert split_a == split_b and split_a
    assert first["counts"] == second["counts"]

    split_of_source = _split_of_source(tmp_path / "a")
    # the exact copy is written once; the re-encoded and resized copies are distinct records ...
    assert first["duplicates"] == len(groups)
    assert first["written"] == 4 * len(groups)
    assert first["near_duplicates"]["unconverged_images"] == 0
    used_splits = set()
    for seed, paths in groups.items():
        kept = [split_of_source[p] for p in paths if p in split_of_source]
        assert len(kept) == 4, (seed, kept)
        assert paths[1] not in split_of_source or paths[0] not in split_of_source  # one of the exact pair only
        assert len(set(kept)) == 1, (seed, kept)  # ... but all in one split
        used_splits.add(kept[0])
    assert len(used_splits) > 1  # the assertion above would be vacuous if everything went to train


def test_a_grown_folder_keeps_every_old_photo_in_its_split_and_accounts_for_every_file(tmp_path):
    """New photos, a new near-copy of a test photo, a photo removed, a file changed: a new version, old splits kept."""
    root, output_dir = tmp_path / "in", tmp_path / "out"
    old = {seed: _write(root, _photo_copies(seed)) for seed in range(10)}
    first = preprocess.run(_args([root], output_dir, "--files_per_batch=6"))
    before = _split_of_source(output_dir)
    test_seed = next(seed for seed, paths in old.items() if before[paths[0]] == "test")
    train_seed = next(seed for seed, paths in old.items() if before[paths[0]] == "train")

    new = _write(root, {f"{('cat', 'dog')[seed % 2]}/new/{seed}.jpg": _jpeg(corpus.photo_pixels(seed, 96), 90)
                        for seed in range(100, 106)})
    near_copy = root / ("cat", "dog")[test_seed % 2] / "near-copy-of-test.jpg"
    near_copy.write_bytes(_jpeg(corpus.photo_pixels(test_seed, size=96), 60))
    gone = old[train_seed][2]
    os.unlink(gone)
    changed = old[train_seed][3]
    with open(changed, "wb") as handle:
        handle.write(_jpeg(corpus.photo_pixels(500, 96), 90))  # other content under an old name
    second = preprocess.run(_args([root], output_dir, "--skip_if_current", "--files_per_batch=6"))
    after = _split_of_source(output_dir)

    assert second["version"] == "v00002" and second["previous_version"] == "v00001"
    for source, split in before.items():
        if source not in (gone, changed):
            assert after[source] == split, source  # no old photo moved
    assert gone not in after
    assert after[str(near_copy)] == "test"  # a new near-copy of a test photo goes to test
    assert all(path in after for path in new)
    assert second["unchanged"] == first["written"] - 2 and second["removed"] == 2  # the gone and the changed one
    assert second["read"] == second["added"] + second["duplicates"] + sum(second["rejected"].values())
    listed = sum(1 for p in root.rglob("*") if p.is_file())
    assert second["listed"] == listed == second["unchanged"] + second["read"] + second["unchanged_rejected"]
    assert second["read"] == len(new) + 2 + second["rechecked_duplicates"]  # new files, the two changed, duplicates
    assert second["written"] == first["written"] - 2 + second["added"]
    assert [entry["version"] for entry in second["history"]] == ["v00001", "v00002"]
    assert second["history"][1]["added"] == second["added"]
    # the earlier version is intact and still readable on its own
    _, v1 = dataset_contract.locate(str(output_dir / "v00001"), storage.read_bytes, storage.exists)
    assert v1["written"] == first["written"]

    third = preprocess.run(_args([root], output_dir, "--skip_if_current"))
    assert third["skipped"] and third["version"] == "v00002"  # nothing changed: no new version


def test_labels_from_file_name_prefix_and_custom_class_names(tmp_path):
    for name, seed in (("box.1.jpg", 1), ("Box_2.jpg", 2), ("ball-3.png", 3), ("tree.4.jpg", 4)):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(corpus.encode(corpus.photo_pixels(seed, 40), "PNG"))
    metadata = preprocess.run(_args([tmp_path / "in"], tmp_path / "out", "--label_from=prefix",
                                    "--class_names=box,ball", "--image_size=16", "--split_ratios=1,0,0"))
    by_split = _records(tmp_path / "out")
    assert sorted(rec[1] for rec in by_split["train"].values()) == ["ball", "box", "box"]
    assert metadata["rejected"] == {records.NO_LABEL: 1}
    assert not by_split["validation"] and not by_split["test"]


def test_gcs_input_and_output_through_the_emulator(gcs_bucket, tmp_path):
    local = tmp_path / "local"
    corpus.write_easy_dataset(local, per_class=4, size=32)
    (local / "dog" / "notes.jpg").write_bytes(b"not an image\n")
    upload_tree(local, f"{gcs_bucket}/raw")
    output_dir = f"{gcs_bucket}/datasets/pets"
    metadata = preprocess.run(_args([f"{gcs_bucket}/raw/"], output_dir, "--image_size=24", "--files_per_batch=3"))
    assert metadata["written"] == 8 and metadata["rejected"] == {imaging.NOT_AN_IMAGE: 1}

    names = sorted(ref.path for ref in file_listing.list_files(f"{output_dir}/"))
    assert f"{output_dir}/latest" in names and f"{output_dir}/v00001/metadata.json" in names
    assert not [n for n in names if "lease" in n or "/_" in n or "beam-temp" in n], names
    version_dir, stored = _version(output_dir)
    assert stored["counts"] == metadata["counts"] and version_dir == f"{output_dir}/v00001"
    assert _rejections(output_dir)[f"{gcs_bucket}/raw/dog/notes.jpg"]["reason"] == imaging.NOT_AN_IMAGE
    assert sum(len(ids) for ids in _records(output_dir).values()) == 8

    upload_tree(local / "cat", f"{gcs_bucket}/raw/more/cats")  # exact copies under new names
    second = preprocess.run(_args([f"{gcs_bucket}/raw/"], output_dir, "--image_size=24", "--skip_if_current"))
    assert (second["version"], second["duplicates"], second["added"]) == ("v00002", 4, 0)
    assert _version(output_dir)[0] == f"{output_dir}/v00002"


def test_dask_runner_writes_the_same_records(duplicates_dir, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    root, _ = duplicates_dir
    preprocess.run(_args([root], tmp_path / "direct"))
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        args = [f"--input={root}", f"--output_dir={tmp_path / 'dask'}", "--runner=DaskRunner",
                f"--dask_client_address={cluster.scheduler_address}", "--files_per_batch=7"]
        metadata = preprocess.run(args)
    direct = {s: sorted(ids) for s, ids in _records(tmp_path / "direct").items()}
    dask = {s: sorted(ids) for s, ids in _records(tmp_path / "dask").items()}
    assert dask == direct
    assert metadata["written"] == sum(len(ids) for ids in direct.values())


def test_the_dataflow_job_graph_carries_no_record_bytes_through_a_shuffle(duplicates_dir, tmp_path):
    """DataflowRunner with --dry_run=True builds the real Dataflow job without submitting it."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import options

    root, _ = duplicates_dir
    argv = ["--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--project", "catsdogs-test", "--region",
            "us-central1", "--temp_location", "gs://catsdogs-test-beam/tmp", "--sdk_location=container",
            "--input", str(root), "--output_dir", str(tmp_path / "out")]
    pipeline_options = PipelineOptions(argv)
    config = options.preprocess_config(pipeline_options)
    plan = preprocess.plan_version(config)
    pipeline = beam.Pipeline(options=pipeline_options)
    preprocess.build(pipeline, config, plan)
    result = pipeline.run()
    transforms = result.job.proto_pipeline.components.transforms
    top = {t.unique_name for t in transforms.values() if "/" not in t.unique_name}
    assert {"ListImages", "DecodeAndWrite", "GroupBands", "PropagateGroups", "DecideSplits", "RewriteBatches",
            "CountOutcomes"} <= top
    shuffles = [t.unique_name for t in transforms.values() if t.spec.urn == "beam:transform:group_by_key:v1"]
    # Record bytes are written by DecodeAndWrite and read back only by RewriteBatches: no shuffle is downstream of
    # DecodeAndWrite's output except on facts (GroupExactCopies onwards) and changes (GroupByBatch).
    assert not any(name.startswith("DecodeAndWrite") for name in shuffles)
    assert not (tmp_path / "out" / "latest").exists()  # nothing ran


def test_building_the_pipeline_draws_no_warning_from_beam(duplicates_dir, tmp_path, caplog):
    """Beam checks each DoFn as the graph is built; a warning there (e.g. "Using yield and return") would be printed
    on every run, to every user, about our code."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import options

    root, _ = duplicates_dir
    pipeline_options = PipelineOptions(["--runner", "DirectRunner", "--input", str(root),
                                        "--output_dir", str(tmp_path / "out")])
    config = options.preprocess_config(pipeline_options)
    with caplog.at_level("WARNING", logger="apache_beam"):
        preprocess.build(beam.Pipeline(options=pipeline_options), config, preprocess.plan_version(config))
    assert [record.getMessage() for record in caplog.records if record.name.startswith("apache_beam")] == []


def test_refuses_overwrites_and_skips_a_current_dataset(tmp_path, capsys):
    corpus.write_easy_dataset(tmp_path / "in", per_class=3, size=32)
    output_dir = tmp_path / "out"
    first = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16"))

    with pytest.raises(SystemExit, match="already holds a dataset.*--skip_if_current.*--overwrite") as failure:
        preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16"))
    assert failure.value.code == 2
    skipped = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16", "--skip_if_current"))
    assert skipped["skipped"] and skipped["finished_at"] == first["finished_at"]
    assert "dataset is up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="made with other options.*--image_size 16 -> 20.*--overwrite"):
        preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=20", "--skip_if_current"))

    (output_dir / "v00002").mkdir()
    (output_dir / "v00002" / "train-dead.tfrecord").write_bytes(b"left by a run that died before publishing")
    again = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=20", "--overwrite"))
    assert again["options"]["image_size"] == 20 and again["version"] == "v00002"
    assert again["previous_version"] is None and not (output_dir / "v00002" / "train-dead.tfrecord").exists()
    assert (output_dir / "v00001" / "metadata.json").exists()  # earlier versions stay

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.txt").write_text("precious")
    with pytest.raises(SystemExit, match="not a dataset"):
        preprocess.run(_args([tmp_path / "in"], tmp_path / "home", "--overwrite"))
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["thesis.txt"]


@pytest.mark.parametrize("extra, message", [
    (["--split_ratios=0.8,0.3,0.1"], "split_ratios.*summing to 1"),
    (["--split_ratios=0.8,0.2"], "split_ratios"),
    (["--split_ratios=a,b,c"], "see the message above"),
    (["--class_names=cat"], "exactly two class names"),
    (["--near_duplicate_bits=20"], "near_duplicate_bits"),
    (["--image_sise=224"], "did you mean --image_size"),
    (["--image=224"], "did you mean --image_size"),  # no abbreviations
])
def test_bad_flags_fail_at_launch_with_exit_code_2(tmp_path, extra, message):
    corpus.write_easy_dataset(tmp_path / "in", per_class=1, size=16)
    with pytest.raises(SystemExit, match=message) as failure:
        preprocess.run(_args([tmp_path / "in"], tmp_path / "out", *extra))
    assert failure.value.code == 2
    assert not (tmp_path / "out").exists()


def test_missing_input_or_flags_fail_at_launch(tmp_path):
    with pytest.raises(SystemExit, match="no files found at .*nowhere") as failure:
        preprocess.run(_args([tmp_path / "nowhere"], tmp_path / "out"))
    assert failure.value.code == 2  # a usage error, as argparse's are
    with pytest.raises(SystemExit, match="no --input given"):
        preprocess.run([f"--output_dir={tmp_path / 'out'}"])

