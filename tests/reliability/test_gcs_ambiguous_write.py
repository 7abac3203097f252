"""Case 9: a GCS write retried after an ambiguous success is recognised as already done: no overwrite, no crash; for
the trainer's publish and for the dataset's lease and `latest` pointer (the scoring lease: tests/beam_pipelines/
test_lifecycle.py).

The server commits the first upload of a marker object and of `latest`, but the client never sees the reply (HTTP 503
instead). google-cloud-storage retries the conditional write (`if_generation_match`), the server answers 412
Precondition Failed, and publishing must recognise its own completed write. fake-gcs-server enforces generation
preconditions (gcp-storage-emulator ignores them); FaultyProxy sits in front of it and loses the chosen replies.
"""

from tests.gcs_servers import FaultyProxy, fake_gcs_bucket_fixture, fake_gcs_server_fixture, lose_first_reply_to  # noqa: F401
from tests.trainer.test_publish import gcs_objects, local_files, make_export
from trainer import publish


def test_gcs_publish_survives_lost_replies_without_overwriting(fake_gcs_server, fake_gcs_bucket, tmp_path,
                                                              monkeypatch):
    root = f"{fake_gcs_bucket}/export"
    bucket_name = fake_gcs_bucket[len("gs://"):]
    export = make_export(tmp_path / "a", "800")
    lost = {"export/800/model_info.json", "export/latest"}
    with FaultyProxy(fake_gcs_server, lose_first_reply_to(lost)) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        published = publish.publish_export(str(export), root, "800")
    assert published.uri == f"{root}/800" and published.move.moved
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server)

    for name in lost:  # the first write took effect, its reply was lost; the retry met it (412 Precondition Failed)
        assert [(fault, status) for _, fault, status, _ in proxy.requests("upload", name)] == [
            ("lose_reply", 503), (None, 412)], name
    objects = gcs_objects(f"{root}/800")
    assert {k: v[0] for k, v in objects.items()} == local_files(export)
    assert publish.read_latest(root).version == "800"

    from google.cloud import storage

    marker = storage.Client().bucket(bucket_name).get_blob("export/800/model_info.json")
    assert marker.generation == objects["model_info.json"][1] and marker.metageneration == 1


def test_preprocessing_publishes_once_when_the_replies_to_its_lease_and_pointer_writes_are_lost(
        fake_gcs_server, fake_gcs_bucket, tmp_path, monkeypatch):
    """The dataset's `latest` moves by compare-and-swap, and the lease is created the same way: a lost reply makes
    the client's retry meet the run's own write (412), which must count as done, not as another writer."""
    from tests import corpus
    from tests.conftest import point_gcs_at
    from tests.reliability.conftest import preprocess_here, read_dataset

    images = tmp_path / "images"
    files = corpus.write_easy_dataset(images, per_class=3, size=32)
    output = f"{fake_gcs_bucket}/data"
    lost = {"data/latest", "data/.lease.json"}
    with FaultyProxy(fake_gcs_server, lose_first_reply_to(lost)) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        metadata = preprocess_here("--input", images, "--output_dir", output, "--image_size", 32)
    point_gcs_at(monkeypatch, fake_gcs_server)

    for name in lost:  # both replies really were lost
        assert [fault for _, fault, _, _ in proxy.requests("upload", name)][:1] == ["lose_reply"], name
    assert metadata["version"] == "v00001"
    sources, _ = read_dataset(output)
    assert len(sources) == len(files)
