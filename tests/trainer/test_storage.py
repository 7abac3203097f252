"""trainer/storage.py on local disk and on GCS (the emulators): reading under a byte cap, retries, atomic writes,
compare-and-swap, copying and deleting trees."""

import os
import textwrap

import pytest

from beam_pipelines import file_listing
from tests.conftest import point_gcs_at, upload_tree
from tests.gcs_servers import FaultyProxy, fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from tests.trainer.datasets import run_python
from trainer import storage


def _touch(path, content: bytes = b"x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


# Reads a 4 GiB (sparse) file under a 1 GiB address-space limit: reading it whole would fail with MemoryError.
CAPPED_READ = textwrap.dedent("""
    import resource, sys
    from trainer import storage
    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
    try:
        storage.read_bytes(sys.argv[1], limit=2**20)
    except storage.FileTooLarge as error:
        print("refused:", error)
""")


def test_a_file_over_the_cap_is_refused_without_being_read_whole(tmp_path):
    huge = tmp_path / "video.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(4 * 2**30)
    assert "refused: more than 1,048,576 bytes" in run_python(CAPPED_READ, huge, timeout=60).stdout
    small = _touch(tmp_path / "small.jpg", b"y" * 100)
    assert storage.read_bytes(small, limit=100) == b"y" * 100  # exactly at the cap is fine
    with pytest.raises(storage.FileTooLarge):
        storage.read_bytes(small, limit=99)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "gone.jpg"))


def test_write_bytes_replaces_a_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "out" / "summary.json")
    storage.write_bytes(path, b"first")
    storage.write_bytes(path, b"second")
    assert storage.read_bytes(path) == b"second"
    assert os.listdir(tmp_path / "out") == ["summary.json"]


def test_compare_and_swap_locally_creates_only_when_absent_and_replaces_only_the_version_read(tmp_path):
    path = str(tmp_path / "state.json")
    assert storage.read_versioned(path) == (None, 0)
    assert storage.write_if_generation(path, b"one", 0)
    assert not storage.write_if_generation(path, b"other", 0)  # it exists now
    content, generation = storage.read_versioned(path)
    assert content == b"one" and generation
    assert storage.write_if_generation(path, b"two", generation)
    assert not storage.write_if_generation(path, b"late", generation)  # a writer holding the old version loses
    assert not storage.delete_if_generation(path, generation)
    assert storage.delete_if_generation(path, storage.read_versioned(path)[1])
    assert not os.path.exists(path)


def _upload(bucket_uri: str, names) -> None:
    from google.cloud import storage as gcs

    bucket = gcs.Client().bucket(bucket_uri[len("gs://"):])
    for name in names:
        bucket.blob(name).upload_from_string(name.encode() * 10)


def test_gcs_reads_are_retried_through_transient_errors_and_capped_reads_fetch_at_most_the_cap(
        gcs_bucket, gcs_emulator_host, monkeypatch):
    faults = {"a.jpg": "503", "b.jpg": "429", "c.jpg": "drop", "d.jpg": "cut", "e.jpg": "500"}
    _upload(gcs_bucket, [*faults, "big.jpg"])

    def first_fails(request):
        return faults.get(request.name) if request.number == 0 else None

    with FaultyProxy(gcs_emulator_host, first_fails) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        for name in faults:
            assert storage.read_bytes(f"{gcs_bucket}/{name}", limit=1000) == name.encode() * 10
        with pytest.raises(storage.FileTooLarge):
            storage.read_bytes(f"{gcs_bucket}/big.jpg", limit=20)
    point_gcs_at(monkeypatch, gcs_emulator_host)

    for name, fault in faults.items():
        assert [entry[1] for entry in proxy.requests("download", name)] == [fault, None]
    [(_, _, _, sent)] = proxy.requests("download", "big.jpg")
    assert sent == 21  # a range read: the cap and one byte to tell, not the object


def test_a_gcs_read_that_keeps_failing_raises_once_the_retry_deadline_passes(gcs_bucket, gcs_emulator_host,
                                                                             monkeypatch):
    _upload(gcs_bucket, ["down.jpg"])
    # The client sleeps uniform(0, 1 s) before its first retry and gives up when the next sleep would pass the deadline:
    # with 1 s, a first request slowed to half a second (a loaded CI machine) left even odds of no retry at all.
    monkeypatch.setattr(storage, "RETRY_SECONDS", 5.0)
    with FaultyProxy(gcs_emulator_host, lambda request: "503") as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        with pytest.raises(Exception, match="503"):  # what the client raises once it gives up
            storage.read_bytes(f"{gcs_bucket}/down.jpg")
    point_gcs_at(monkeypatch, gcs_emulator_host)
    assert len(proxy.requests("download")) >= 2  # retried, then given up: the file's problem, not a hung job


def test_compare_and_swap_on_gcs_with_preconditions_enforced(fake_gcs_bucket, fake_gcs_server, monkeypatch):
    path = f"{fake_gcs_bucket}/runs/state.json"
    assert storage.read_versioned(path) == (None, 0)
    assert storage.write_if_generation(path, b"one", 0)
    assert not storage.write_if_generation(path, b"other", 0)
    content, generation = storage.read_versioned(path)
    assert content == b"one"
    assert storage.write_if_generation(path, b"two", generation)
    assert not storage.write_if_generation(path, b"late", generation)
    # (fake-gcs-server ignores preconditions on DELETE, so delete_if_generation is tested locally only)
    assert storage.delete_if_generation(path, storage.read_versioned(path)[1])
    assert not storage.exists(path)


def test_upload_tree_and_delete_tree_on_gcs(gcs_bucket, gcs_emulator_host, tmp_path, monkeypatch):
    _touch(tmp_path / "t" / "a.txt")
    _touch(tmp_path / "t" / "b" / "c.txt")
    upload_tree(tmp_path / "t", f"{gcs_bucket}/tree")
    storage.copy(f"{gcs_bucket}/tree/a.txt", f"{gcs_bucket}/copy/a.txt")
    assert storage.read_bytes(f"{gcs_bucket}/copy/a.txt") == b"x"
    storage.delete_tree(f"{gcs_bucket}/tree")
    assert list(file_listing.list_files(f"{gcs_bucket}/tree/")) == []
    assert [ref.path for ref in file_listing.list_files(f"{gcs_bucket}/")] == [f"{gcs_bucket}/copy/a.txt"]
