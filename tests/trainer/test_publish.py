"""trainer/publish.py: immutable versions, a `latest` moved by compare-and-swap whose outcome is reported, idempotent
retries, versions that never go backwards.

GCS behaviour runs against fake-gcs-server on 127.0.0.1 (tests/gcs_servers.py), which enforces generation
preconditions as GCS does; the local filesystem path is tested on tmp_path.
"""

import json
import threading
from pathlib import Path

import pytest

from tests.gcs_servers import fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from trainer import export, model_contract, publish
from trainer.model_contract import Pointer


def make_export(root: Path, version: str, weights: bytes = b"weights") -> Path:
    """A small export directory shaped like trainer/export.py's (model_info.json is the marker)."""
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph-" + version.encode())
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    (root / "variables" / "variables.index").write_bytes(b"index")
    info = {"model_version": version, "files": {"variables/variables.data-00000-of-00001": weights.hex()}}
    (root / model_contract.MODEL_INFO).write_text(json.dumps(info, sort_keys=True))
    return root


def pointer(version: str) -> Pointer:
    """A pointer to version (the checksum matters only where a test reads the version back)."""
    return Pointer(version, model_contract.sha256_bytes(version.encode()))


def latest_version(root) -> str | None:
    current = publish.read_latest(str(root))
    return current and current.version


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

    assert published.uri == str(root / "200") and published.move.moved
    assert local_files(root / "200") == local_files(tmp_path / "a")
    info_sha = model_contract.sha256_bytes((root / "200" / model_contract.MODEL_INFO).read_bytes())
    assert publish.read_latest(str(root)) == Pointer("200", info_sha)  # with the sha256 of its model_info.json
    older = publish.move_latest(str(root), pointer("100"))
    assert not older.moved and older.latest.version == "200" and "not older" in older.reason
    assert publish.move_latest(str(root), pointer("1000")).moved  # numeric order, not text order
    assert publish.resolve_model(str(root)) == str(root / "1000")
    assert [p.name for p in root.iterdir() if p.name.startswith(".staging")] == []


def test_local_retry_after_crash_before_latest_moves_latest(tmp_path, monkeypatch):
    root = tmp_path / "export"
    export = make_export(tmp_path / "a", "300")
    real_move = publish.move_latest

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the copy and the pointer")

    monkeypatch.setattr(publish, "move_latest", crash)
    with pytest.raises(KeyboardInterrupt):
        publish.publish_export(str(export), str(root), "300", expected=None)
    assert publish.read_latest(str(root)) is None
    monkeypatch.setattr(publish, "move_latest", real_move)

    retried = publish.publish_export(str(export), str(root), "300", expected=None)
    assert retried.uri == str(root / "300") and retried.move.moved
    assert latest_version(root) == "300"


def test_local_version_with_other_content_is_refused_untouched(tmp_path):
    root = tmp_path / "export"
    publish.publish_export(str(make_export(tmp_path / "a", "400")), str(root), "400")
    before = local_files(root / "400")

    with pytest.raises(publish.VersionTaken, match="immutable"):
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
    assert latest_version(root) == "507"
    for version in versions:
        assert local_files(root / version) == local_files(exports[version])


def test_incomplete_export_is_not_published(tmp_path):
    export = make_export(tmp_path / "a", "1")
    (export / model_contract.MODEL_INFO).unlink()
    with pytest.raises(publish.PublishError, match="incomplete"):
        publish.publish_export(str(export), str(tmp_path / "export"), "1")
    assert not (tmp_path / "export").exists()


# GCS (fake-gcs-server: generation preconditions enforced) -------------------------------------------

def test_gcs_publish_uploads_every_file_and_resolves(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/model/export"
    export = make_export(tmp_path / "a", "600")

    assert publish.publish_export(str(export), root, "600").uri == f"{root}/600"

    assert {k: v[0] for k, v in gcs_objects(f"{root}/600").items()} == local_files(export)
    assert latest_version(root) == "600"
    assert publish.list_versions(root) == ["600"]
    assert publish.resolve_model(root) == f"{root}/600"
    assert publish.resolve_model(f"{root}/600/") == f"{root}/600"  # a version directory, as given


def test_gcs_writer_with_stale_read_loses_the_race_and_reports_the_winner(fake_gcs_bucket, monkeypatch):
    """Deterministic interleaving: A reads `latest`, B moves it to a newer version, A's conditional
    write must fail (412) and A must re-read instead of overwriting B's newer pointer."""
    root = f"{fake_gcs_bucket}/export"
    assert publish.move_latest(root, pointer("100")).moved
    real_read = publish._read_latest_gcs
    reads_by_a = []

    def read_then_let_b_win(export_root, client=None):
        seen = real_read(export_root, client)
        reads_by_a.append(seen)
        if len(reads_by_a) == 1:
            monkeypatch.setattr(publish, "_read_latest_gcs", real_read)  # B runs unpatched
            assert publish.move_latest(root, pointer("300")).moved
            monkeypatch.setattr(publish, "_read_latest_gcs", read_then_let_b_win)
        return seen

    monkeypatch.setattr(publish, "_read_latest_gcs", read_then_let_b_win)
    move = publish.move_latest(root, pointer("200"))
    assert not move.moved and move.latest.version == "300"  # A says it lost, and to whom

    assert [seen.version for seen, _ in reads_by_a] == ["100", "300"]  # A retried after its 412
    assert latest_version(root) == "300"


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
    assert latest_version(root) == "705"
    for version in versions:
        assert {k: v[0] for k, v in gcs_objects(f"{root}/{version}").items()} == local_files(exports[version])


def test_gcs_republishing_the_same_export_is_a_no_op(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/export"
    export = make_export(tmp_path / "a", "900")
    publish.publish_export(str(export), root, "900")
    before = gcs_objects(f"{root}/900")

    assert publish.publish_export(str(export), root, "900").move.moved

    assert gcs_objects(f"{root}/900") == before  # same generations: nothing rewritten
    assert latest_version(root) == "900"


def test_gcs_version_with_other_content_is_refused_before_writing(fake_gcs_bucket, tmp_path):
    root = f"{fake_gcs_bucket}/export"
    publish.publish_export(str(make_export(tmp_path / "a", "950")), root, "950")
    before = gcs_objects(f"{root}/950")
    other = make_export(tmp_path / "b", "950", weights=b"other")
    (other / "extra.txt").write_text("not part of the published version")

    with pytest.raises(publish.VersionTaken, match="immutable"):
        publish.publish_export(str(other), root, "950")

    assert gcs_objects(f"{root}/950") == before  # no overwrite and no stray extra.txt


def test_gcs_publish_works_on_a_server_that_sends_no_generation_header(gcs_bucket, tmp_path):
    """gcp-storage-emulator (the other tests' GCS) returns content without x-goog-generation; `latest` must
    still move forward, taking the generation from the object's metadata."""
    root = f"{gcs_bucket}/export"
    publish.publish_export(str(make_export(tmp_path / "a", "10")), root, "10")
    publish.publish_export(str(make_export(tmp_path / "b", "20")), root, "20")

    assert latest_version(root) == "20"
    assert not publish.move_latest(root, pointer("15")).moved
    assert publish.resolve_model(root) == f"{root}/20"
    assert publish.list_versions(root) == ["10", "20"]


# Compare-and-swap, versions, old pointers ------------------------------------------------------------------------

def test_a_move_from_a_pointer_that_changed_meanwhile_is_refused_and_says_so(tmp_path):
    root = str(tmp_path / "export")
    seen = None  # what a trainer saw when it started its gate: nothing published
    assert publish.move_latest(root, pointer("100"), expected=None).moved  # another trainer publishes first
    move = publish.move_latest(root, pointer("200"), expected=seen)
    assert not move.moved and move.latest.version == "100" and "moved it meanwhile" in move.reason
    assert latest_version(tmp_path / "export") == "100"
    assert publish.move_latest(root, pointer("200"), expected=pointer("100")).moved  # from what it saw: moves
    assert publish.move_latest(root, pointer("200"), expected=pointer("100")).moved  # a retry: ours already


def test_gcs_compare_and_swap_from_an_old_pointer_is_refused(fake_gcs_bucket):
    root = f"{fake_gcs_bucket}/export"
    assert publish.move_latest(root, pointer("100"), expected=None).moved
    assert not publish.move_latest(root, pointer("300"), expected=None).moved  # not "nothing" any more
    assert publish.move_latest(root, pointer("300"), expected=pointer("100")).moved
    assert latest_version(root) == "300"


def test_next_version_is_newer_than_every_version_there_whatever_the_clock(tmp_path):
    root = tmp_path / "export"
    assert publish.next_version(str(root), now=1_000) == "1000"
    publish.publish_export(str(make_export(tmp_path / "a", "5000")), str(root), "5000")
    (root / "7000").mkdir()  # an incomplete version (a crashed copy): its name is taken all the same
    assert publish.next_version(str(root), now=1_000) == "7001"  # clock behind: still newer, no collision
    assert publish.next_version(str(root), now=9_000) == "9000"  # clock ahead of everything: the clock


def test_an_auto_version_taken_by_another_publisher_meanwhile_moves_to_the_next(tmp_path, monkeypatch):
    root = tmp_path / "export"
    publish.publish_export(str(make_export(tmp_path / "other", "1001")), str(root), "1001")
    offered = iter(["1001", "1002"])  # the listing missed 1001: it was published between listing and copying
    monkeypatch.setattr(publish, "next_version", lambda export_root: next(offered))
    staging = make_export(tmp_path / "ours", "unused")
    (staging / model_contract.MODEL_INFO).unlink()
    published = export.publish_staged(str(staging), str(root), model_name="tiny", class_names=["cat", "dog"],
                                      input_size=[8, 8])
    assert published.version == "1002" and published.move.moved and latest_version(root) == "1002"
    info = json.loads((root / "1002" / model_contract.MODEL_INFO).read_text())
    assert info["model_version"] == "1002"
    assert json.loads((root / "1001" / model_contract.MODEL_INFO).read_text())["model_version"] == "1001"


def test_an_old_plain_text_pointer_is_read_and_replaced_by_the_next_publish(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "latest").write_text("1700000000\n")
    assert publish.read_latest(str(root)) == Pointer("1700000000", None)
    assert publish.read_latest(str(root)).legacy
    assert publish.move_latest(str(root), pointer("1700000001")).moved
    assert json.loads((root / "latest").read_text())["version"] == "1700000001"


@pytest.mark.parametrize("content", [b"../../planted\n", b"{not json", b'{"format": 2, "version": "12"}',
                                     b'{"format": 3, "version": "12", "model_info_sha256": "' + b"0" * 64 + b'"}',
                                     b"x" * 5000])
def test_a_damaged_pointer_stops_publishing_with_a_message(content, tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "latest").write_bytes(content)
    with pytest.raises(publish.PublishError, match="latest"):
        publish.read_latest(str(root))
    with pytest.raises(publish.PublishError):
        publish.move_latest(str(root), pointer("5"))
    assert (root / "latest").read_bytes() == content
