"""The preprocessing job end to end on real runners (DirectRunner in both modes, DaskRunner, GCS emulator)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from beam_pipelines import imaging, preprocess
from tests import corpus
from tests.conftest import upload_tree
from trainer import features


def _args(inputs, output_dir, *extra):
    return [*(f"--input={path}" for path in inputs), f"--output_dir={output_dir}", "--runner=DirectRunner", *extra]


def _records(output_dir):
    """{split: {image id: (label, class name, source, decoded shape)}} parsed back with TensorFlow."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], dtype) for key, dtype in (
        (features.IMAGE_KEY, tf.string), (features.LABEL_KEY, tf.int64), (features.CLASS_KEY, tf.string),
        (features.ID_KEY, tf.string), (features.SOURCE_KEY, tf.string))}
    out = {}
    for split in features.SPLITS:
        files = tf.io.gfile.glob(f"{output_dir}/{features.shard_glob(split)}")
        assert files, f"no {split} shards in {output_dir}"
        out[split] = {}
        for raw in tf.data.TFRecordDataset(sorted(files)):
            parsed = tf.io.parse_single_example(raw, spec)
            shape = tuple(tf.io.decode_jpeg(parsed[features.IMAGE_KEY]).shape)
            out[split][parsed[features.ID_KEY].numpy().decode()] = (
                int(parsed[features.LABEL_KEY]), parsed[features.CLASS_KEY].numpy().decode(),
                parsed[features.SOURCE_KEY].numpy().decode(), shape)
    return out


def _rejections(output_dir):
    lines = []
    for path in sorted(output_dir.glob("rejected-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
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


@pytest.fixture(scope="module")
def duplicates_dir(tmp_path_factory):
    """Photo-like pictures, each with copies: byte-identical, re-encoded at other qualities, slightly resized."""
    root = tmp_path_factory.mktemp("dups")
    groups = {}
    for seed in range(8):
        pixels = corpus.photo_pixels(seed, size=96)
        label = ("cat", "dog")[seed % 2]
        original = _jpeg(pixels, 92)
        resized = np.asarray(Image.fromarray(pixels).resize((90, 90), Image.Resampling.BILINEAR))
        copies = {
            f"{label}/{seed}.jpg": original,
            f"{label}s/other/copy-{seed}.jpg": original,  # exact copy elsewhere
            f"{label.upper()}/q70-{seed}.jpg": _jpeg(pixels, 70),
            f"{label}/more/q50-{seed}.jpg": _jpeg(pixels, 50),
            f"{label}/small-{seed}.png": corpus.encode(resized, "PNG"),
        }
        for relative, data in copies.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
        groups[seed] = [str(root / relative) for relative in copies]
    return root, groups


@pytest.fixture(scope="module")
def corpus_run(corpus_dir, tmp_path_factory):
    root, _ = corpus_dir
    output_dir = tmp_path_factory.mktemp("out") / "dataset"
    metadata = preprocess.run(_args([root], output_dir, "--image_size=32"))
    return output_dir, metadata


def test_every_file_is_accounted_for_and_records_parse(corpus_dir, corpus_run):
    root, expected = corpus_dir
    output_dir, metadata = corpus_run
    listed = [p for p in root.rglob("*") if p.is_file()]
    assert metadata["read"] == len(listed)
    assert metadata["read"] == metadata["written"] + metadata["duplicates"] + sum(metadata["rejected"].values())

    rejections = _rejections(output_dir)
    for path, reason in expected.items():
        if reason is not None:
            assert rejections[str(path)]["reason"] == reason, path
            assert rejections[str(path)]["detail"]
        else:
            assert str(path) not in rejections, rejections.get(str(path))
    assert rejections[str(root / "unlabelled" / "bird.jpg")]["reason"] == preprocess.NO_LABEL
    assert sum(metadata["rejected"].values()) == len(rejections)

    records = _records(output_dir)
    written = {image_id: record for split in records.values() for image_id, record in split.items()}
    assert len(written) == metadata["written"]
    for split in features.SPLITS:
        assert metadata["counts"][split]["total"] == len(records[split])
    sources = {record[2]: record for record in written.values()}
    for path in listed:
        if str(path) in sources:
            label, class_name, _, shape = sources[str(path)]
            assert shape == (32, 32, 3)
            assert class_name == features.DEFAULT_CLASS_NAMES[label]
            assert class_name == ("dog" if "dog" in str(path.relative_to(root)) else "cat"), path
    assert (output_dir / "metadata.json").exists()
    assert not list(output_dir.parent.glob("*.staging-*"))
    assert sorted(p.name for p in output_dir.iterdir() if not p.name.endswith(".tfrecord")) == [
        "metadata.json", "rejected-00000-of-00001.jsonl"]
    assert metadata["options"]["image_size"] == 32 and metadata["code_version"]


def test_split_is_deterministic_and_copies_stay_together(duplicates_dir, tmp_path):
    root, groups = duplicates_dir
    first = preprocess.run(_args([root], tmp_path / "a"))
    second = preprocess.run(_args([root], tmp_path / "b", "--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2"))
    split_a = {i: s for s, ids in _records(tmp_path / "a").items() for i in ids}
    split_b = {i: s for s, ids in _records(tmp_path / "b").items() for i in ids}
    assert split_a == split_b and split_a
    assert first["counts"] == second["counts"]

    records = _records(tmp_path / "a")
    split_of_source = {rec[2]: split for split, ids in records.items() for rec in ids.values()}
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


def test_labels_from_file_name_prefix_and_custom_class_names(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(preprocess, "_PROGRESS_SECONDS", 0.0)  # a progress line per file
    caplog.set_level("INFO", logger="beam_pipelines.preprocess")
    for name, seed in (("box.1.jpg", 1), ("Box_2.jpg", 2), ("ball-3.png", 3), ("tree.4.jpg", 4)):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(corpus.encode(corpus.photo_pixels(seed, 40), "PNG"))
    metadata = preprocess.run(_args([tmp_path / "in"], tmp_path / "out", "--label_from=prefix",
                                    "--class_names=box,ball", "--image_size=16", "--split_ratios=1,0,0"))
    records = _records(tmp_path / "out")
    assert sorted(rec[1] for rec in records["train"].values()) == ["ball", "box", "box"]
    assert metadata["rejected"] == {preprocess.NO_LABEL: 1}
    assert not records["validation"] and not records["test"]
    assert any("files done by this worker" in message for message in caplog.messages)


def test_gcs_input_and_output_through_the_emulator(gcs_bucket, tmp_path):
    local = tmp_path / "local"
    corpus.write_easy_dataset(local, per_class=4, size=32)
    (local / "dog" / "notes.jpg").write_bytes(b"not an image\n")
    upload_tree(local, f"{gcs_bucket}/raw")
    output_dir = f"{gcs_bucket}/datasets/v1"
    metadata = preprocess.run(_args([f"{gcs_bucket}/raw/"], output_dir, "--image_size=24"))
    assert metadata["written"] == 8 and metadata["rejected"] == {imaging.NOT_AN_IMAGE: 1}

    from google.cloud import storage

    bucket = storage.Client().bucket(gcs_bucket[len("gs://"):])
    names = sorted(blob.name for blob in bucket.list_blobs(prefix="datasets/"))
    assert "datasets/v1/metadata.json" in names
    assert not [n for n in names if "staging" in n or "beam-temp" in n], names
    assert sum(n.endswith(".tfrecord") for n in names) == 3
    stored = json.loads(bucket.blob("datasets/v1/metadata.json").download_as_bytes())
    assert stored["counts"] == metadata["counts"]
    rejected = bucket.blob("datasets/v1/rejected-00000-of-00001.jsonl").download_as_text()
    assert json.loads(rejected)["path"] == f"{gcs_bucket}/raw/dog/notes.jpg"


def test_dask_runner_writes_the_same_records(duplicates_dir, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    root, _ = duplicates_dir
    preprocess.run(_args([root], tmp_path / "direct"))
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        args = [f"--input={root}", f"--output_dir={tmp_path / 'dask'}", "--runner=DaskRunner",
                f"--dask_client_address={cluster.scheduler_address}"]
        metadata = preprocess.run(args)
    direct = {s: sorted(ids) for s, ids in _records(tmp_path / "direct").items()}
    dask = {s: sorted(ids) for s, ids in _records(tmp_path / "dask").items()}
    assert dask == direct
    assert metadata["written"] == sum(len(ids) for ids in direct.values())


def test_refuses_overwrites_and_skips_current_dataset(tmp_path, capsys):
    corpus.write_easy_dataset(tmp_path / "in", per_class=3, size=32)
    output_dir = tmp_path / "out"
    first = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16"))

    with pytest.raises(SystemExit, match="already holds a dataset.*--overwrite"):
        preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16"))
    skipped = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=16", "--skip_if_current"))
    assert skipped["skipped"] and skipped["finished_at"] == first["finished_at"]
    assert "dataset is up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other inputs or options.*--overwrite"):
        preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=20", "--skip_if_current"))

    (output_dir / "train-00099-of-00100.tfrecord").write_bytes(b"stale shard from an older run")
    again = preprocess.run(_args([tmp_path / "in"], output_dir, "--image_size=20", "--skip_if_current",
                                 "--overwrite", "--num_shards=2"))
    assert again["options"]["image_size"] == 20 and again["num_shards"]["train"] == 2
    assert sorted(p.name for p in output_dir.glob("train-*")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.txt").write_text("precious")
    with pytest.raises(SystemExit, match="not part of a dataset"):
        preprocess.run(_args([tmp_path / "in"], tmp_path / "home", "--overwrite"))
    assert (tmp_path / "home" / "thesis.txt").read_text() == "precious"


@pytest.mark.parametrize("extra, message", [
    (["--split_ratios=0.8,0.3,0.1"], "split_ratios.*summing to 1"),
    (["--split_ratios=0.8,0.2"], "split_ratios"),
    (["--split_ratios=a,b,c"], "split_ratios"),
    (["--class_names=cat"], "exactly two class names"),
    (["--near_duplicate_bits=20"], "near_duplicate_bits"),
])
def test_bad_flags_fail_at_launch(tmp_path, extra, message):
    corpus.write_easy_dataset(tmp_path / "in", per_class=1, size=16)
    with pytest.raises(SystemExit, match=message):
        preprocess.run(_args([tmp_path / "in"], tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_missing_input_or_flags_fail_at_launch(tmp_path):
    with pytest.raises(SystemExit, match="no files found at .*nowhere"):
        preprocess.run(_args([tmp_path / "nowhere"], tmp_path / "out"))
    with pytest.raises(SystemExit, match="no --input given"):
        preprocess.run([f"--output_dir={tmp_path / 'out'}"])


def test_hash_bands_find_every_pair_within_the_threshold():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=int(rng.integers(0, 5)), replace=False)
        b = a ^ sum(1 << int(bit) for bit in flips)
        assert any(x == y for x, y in zip(preprocess.hash_bands(a, 4), preprocess.hash_bands(b, 4), strict=True))
    links = list(preprocess.link_bucket(((0, 0), [("x", 0b1111), ("y", 0b0000), ("z", 0b11111)]), 4))
    assert sorted(links) == [("x", "y"), ("x", "z"), ("y", "x"), ("z", "x")]


def test_split_for_group_follows_ratios():
    groups = [f"{i:064x}" for i in range(3000)]
    splits = [preprocess.split_for_group(g, (0.8, 0.1, 0.1)) for g in groups]
    assert 0.75 < splits.count("train") / len(splits) < 0.85
    assert {preprocess.split_for_group(g, (0.0, 0.0, 1.0)) for g in groups[:50]} == {"test"}
