"""trainer/publish.py: immutable versions, a `latest` that only moves forward, idempotent retries.

GCS behaviour runs against fake-gcs-server on 127.0.0.1 (tests/gcs_servers.py), which enforces generation
preconditions as GCS does; the local filesystem path is tested on tmp_path.
"""

import json
import threading
from pathlib import Path

import pytest

from tests.gcs_servers import fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from trainer import publish


def make_export(root: Path, version: str, weights: bytes = b"weights") -> Path:
    """A small export directory shaped like trainer/export.py's (model_info.json is the marker)."""
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph-" + version.encode())
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    (root / "variables" / "variables.index").write_bytes(b"index")
    info = {"model_version": version, "files": {"variables/variables.data-00000-of-00001": weights.hex()}}
    (root / publish.MODEL_INFO).write_text(json.dumps(info, sort_keys=True))
    return root


def local_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def gcs_objects(prefix: str) -> dict:
    """{relative name: (content, generation)} of every object under gs://bucket/prefix/."""
    from google.cloud import storage

    bucket_name, _, name = prefix[len("gs://"):].partition("/")
    return {blob.name[len(name) + 1:]: (blob.download_as_bytes(), blob.generation)
            for blob in storage.Client().list_blobs(bucket_name, prefix=name + "/")}


# Local filesystem ------------------------------------------------------------------------------------

def test_local_publish_is_complete_and_latest_only_moves_forward(tmp_path):
    root = tmp_path / "export"
    published = publish.publish_export(str(make_export(tmp_path / "a", "200")), str(root), "200")

    assert published == str(root / "200")
    assert local_files(root / "200") == local_files(tmp_path / "a")
    assert publish.read_latest(str(root)) == "200"
    assert publish.advance_latest(str(root), "100") == "200"  # an older version never wins
    assert publish.advance_latest(str(root), "1000") == "1000"  # numeric order, not text order
    assert publish.resolve_model(str(root)) == str(root / "1000")
    assert [p.name for p in root.iterdir() if p.name.startswith(".staging")] == []


def test_local_retry_after_crash_before_latest_moves_latest(tmp_path, monkeypatch):
    root = tmp_path / "export"
    export = make_export(tmp_path / "a", "300")
    real_advance = publish.advance_latest

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the copy and the pointer")

    monkeypatch.setattr(publish, "advance_latest", crash)
    with pytest.raises(KeyboardInterrupt):
        publish.publish_export(str(export), str(root), "300")
    assert publish.read_latest(str(root)) is None
    monkeypatch.setattr(publish, "advance_latest", real_advance)

    assert publish.publish_export(str(export), str(root), "300") == str(root / "300")
    assert publish.read_latest(str(root)) == "300"


def test_local_version_with_other_content_is_refused_untouched(tmp_path):
    root = tmp_path / "export"
    publish.publish_export(str(make_export(tmp_path / "a", "400")), str(root), "400")
    before = local_files(root / "400")

    with pytest.raises(publish.PublishError, match="immutable"):
        publish.publish_export(str(make_export(tmp_path / "b", "400", b"other")), str(root), "400")
    assert local_files(root / "400") == before


def test_local_concurrent_publishers_leave_newest_latest(tmp_path):
    root = tmp_path / "export"
    versions = [str(v) for v in range(500, 508)]
    exports = {v: make_export(tmp_path / v, v) for v in versions}
    barrier = threading.Barrier(len(versions))
    errors = []

    def run(version):
        try:
            barrier.wait()
            publish.publish_export(str(exports[version]), str(root), version)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert publish.read_latest(str(root)) == "507"
    for version in versions:
        assert local_files(root / version) == local_files(exports[version])


def test_incomplete_export_is_not_published(tmp_path):
    export = make_export(tmp_path / "a", "1")
    (export / publish.MODEL_INFO).unlink()
    with pytest.raises(publish.PublishError, match="incomplete"):
        publish.publish_export(str(export), str(tmp_path / "export"), "1")
    assert not (tmp_path / "export").exists()


# GCS (fake-gcs-server: generation preconditions enforced) -------------------------------------------

def test_gcs_publish_uploads_every_file_and_resolves(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/model/export"
    export = make_export(tmp_path / "a", "600")

    assert publish.publish_export(str(export), root, "600") == f"{root}/600"

    assert {k: v[0] for k, v in gcs_objects(f"{root}/600").items()} == local_files(export)
    assert publish.read_latest(root) == "600"
    assert publish.resolve_model(root) == f"{root}/600"
    assert publish.resolve_model(f"{root}/600/") == f"{root}/600"  # a version directory, as given


def test_gcs_writer_with_stale_read_loses_the_race_and_reports_the_winner(fake_gcs_bucket, monkeypatch):
    """Deterministic interleaving: A reads `latest`, B moves it to a newer version, A's conditional
    write must fail (412) and A must re-read instead of overwriting B's newer pointer."""
    root = f"{fake_gcs_bucket}/export"
    publish.advance_latest(root, "100")
    real_read = publish._read_latest_gcs
    reads_by_a = []

    def read_then_let_b_win(export_root, client=None):
        seen = real_read(export_root, client)
        reads_by_a.append(seen)
        if len(reads_by_a) == 1:
            monkeypatch.setattr(publish, "_read_latest_gcs", real_read)  # B runs unpatched
            assert publish.advance_latest(root, "300") == "300"
            monkeypatch.setattr(publish, "_read_latest_gcs", read_then_let_b_win)
        return seen

    monkeypatch.setattr(publish, "_read_latest_gcs", read_then_let_b_win)
    assert publish.advance_latest(root, "200") == "300"

    assert [version for version, _ in reads_by_a] == ["100", "300"]  # A retried after its 412
    assert publish.read_latest(root) == "300"


def test_gcs_concurrent_publishers_race_for_latest(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/export"
    versions = ["700", "701", "702", "703", "704", "705"]
    exports = {v: make_export(tmp_path / v, v, weights=v.encode() * 1000) for v in versions}
    barrier = threading.Barrier(len(versions))
    errors = []

    def run(version):
        try:
            barrier.wait()
            publish.publish_export(str(exports[version]), root, version)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert publish.read_latest(root) == "705"
    for version in versions:
        assert {k: v[0] for k, v in gcs_objects(f"{root}/{version}").items()} == local_files(exports[version])


def test_gcs_republishing_the_same_export_is_a_no_op(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/export"
    export = make_export(tmp_path / "a", "900")
    publish.publish_export(str(export), root, "900")
    before = gcs_objects(f"{root}/900")

    assert publish.publish_export(str(export), root, "900") == f"{root}/900"

    assert gcs_objects(f"{root}/900") == before  # same generations: nothing rewritten
    assert publish.read_latest(root) == "900"


def test_gcs_version_with_other_content_is_refused_before_writing(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/export"
    publish.publish_export(str(make_export(tmp_path / "a", "950")), root, "950")
    before = gcs_objects(f"{root}/950")
    other = make_export(tmp_path / "b", "950", weights=b"other")
    (other / "extra.txt").write_text("not part of the published version")

    with pytest.raises(publish.PublishError, match="immutable"):
        publish.publish_export(str(other), root, "950")

    assert gcs_objects(f"{root}/950") == before  # no overwrite and no stray extra.txt


def test_gcs_publish_works_on_a_server_that_sends_no_generation_header(gcs_bucket, tmp_path):
    """gcp-storage-emulator (the other tests' GCS) returns content without x-goog-generation; `latest` must
    still move forward, taking the generation from the object's metadata."""
    root = f"{gcs_bucket}/export"
    publish.publish_export(str(make_export(tmp_path / "a", "10")), root, "10")
    publish.publish_export(str(make_export(tmp_path / "b", "20")), root, "20")

    assert publish.read_latest(root) == "20"
    assert publish.advance_latest(root, "15") == "20"
    assert publish.resolve_model(root) == f"{root}/20"
