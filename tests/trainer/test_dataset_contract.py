"""The dataset folder's contract: the pointer, the metadata check, paths between versions."""

import json

import pytest

from trainer import dataset_contract


def _metadata(**extra) -> bytes:
    record = {"format_version": dataset_contract.FORMAT_VERSION, "version": "v00002", "image_size": [32, 32],
              "class_names": ["cat", "dog"], "counts": {}, "shards": {"train": [
                  {"path": "../v00001/train-a.tfrecord", "records": 3}, {"path": "train-b.tfrecord", "records": 2}]},
              **extra}
    return json.dumps(record).encode()


def _folder(files: dict):
    return (lambda path: files[path]), (lambda path: path in files)


def test_latest_leads_to_the_version_and_its_shards_across_versions():
    data = _metadata()
    read, exists = _folder({"/d/latest": dataset_contract.pointer("v00002", data), "/d/v00002/metadata.json": data})
    version_dir, metadata = dataset_contract.locate("/d", read, exists)
    assert version_dir == "/d/v00002"
    assert dataset_contract.split_shards(metadata, version_dir, "train") == [
        ("/d/v00001/train-a.tfrecord", 3), ("/d/v00002/train-b.tfrecord", 2)]
    assert dataset_contract.join("gs://b/d/v00002", "../v00001/x") == "gs://b/d/v00001/x"


def test_a_metadata_changed_after_publishing_is_refused():
    data = _metadata()
    read, exists = _folder({"/d/latest": dataset_contract.pointer("v00002", data),
                            "/d/v00002/metadata.json": _metadata(note="edited")})
    with pytest.raises(dataset_contract.DatasetError, match="does not match the sha256"):
        dataset_contract.locate("/d", read, exists)


@pytest.mark.parametrize("pointer", [b"v00002\n", b'{"version": "../../elsewhere", "metadata_sha256": "x"}'])
def test_a_pointer_that_is_not_a_version_is_refused(pointer):
    read, exists = _folder({"/d/latest": pointer})
    with pytest.raises(dataset_contract.DatasetError):
        dataset_contract.locate("/d", read, exists)


def test_a_folder_without_a_dataset_says_to_preprocess():
    read, exists = _folder({})
    with pytest.raises(dataset_contract.DatasetError, match="Run preprocessing first"):
        dataset_contract.locate("/nowhere", read, exists)
