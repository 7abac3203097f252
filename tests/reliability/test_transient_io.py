"""Transient GCS errors are retried and nothing is lost, scored or written twice; an object deleted between listing
and reading is dead-lettered with its reason and the job succeeds. Both jobs.

A fault-injecting proxy (tests/gcs_servers.py FaultyProxy) sits in front of the GCS emulator and answers the first
request of every kind for every object with what GCS and the network really produce: HTTP 503, HTTP 429, a
connection closed without an answer, a reply cut off half-way (reads), an ambiguous success (a write the server made
whose reply was lost). The jobs are the launchers on the DirectRunner, as `make score` and `make preprocess` run them,
reading from and writing to GCS through google-cloud-storage's own retry policy.
"""

import json

import pytest

from beam_pipelines import reading, score
from tests import corpus
from tests.conftest import point_gcs_at, upload_tree
from tests.gcs_servers import FaultyProxy
from tests.reliability.conftest import preprocess_here, read_dataset, score_here
from trainer import storage

pytestmark = pytest.mark.slow

READ_FAULTS = ("503", "429", "drop", "cut")
VANISHES = "images/dog/2.jpg"


def _faults(request):
    """The first request of each kind for each object fails; one object is deleted right before it is read."""
    if request.number:
        return None
    if request.kind == "download" and request.name.startswith("images/"):
        if request.name == VANISHES:
            return "delete"
        return READ_FAULTS[sum(map(ord, request.name)) % len(READ_FAULTS)]
    if request.kind == "list":
        return "429"
    if request.kind == "upload" and "/.lease-" not in "/" + request.name:
        # Plain uploads overwrite, so an ambiguous success retried is harmless; the lease's create-if-absent is
        # tested against lost replies in tests/beam_pipelines/test_lifecycle.py (it needs a server that enforces
        # preconditions).
        return "lose_reply" if request.name.endswith(".jsonl") else "503"
    if request.kind in ("upload", "metadata", "copy", "delete"):
        return "503"
    return None


def test_transient_gcs_errors_are_retried_and_a_deleted_object_is_dead_lettered(gcs_bucket, gcs_emulator_host,
                                                                                tiny_export, tmp_path, monkeypatch):
    local = tmp_path / "images"
    files = corpus.write_easy_dataset(local, per_class=8, size=32)
    upload_tree(local, f"{gcs_bucket}/images")
    output = f"{gcs_bucket}/scores"
    with FaultyProxy(gcs_emulator_host, _faults) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        summary = score_here("--model", tiny_export, "--input", f"{gcs_bucket}/images", "--output_dir", output,
                             "--run_id", "r", "--files_per_batch", 4)
        point_gcs_at(monkeypatch, gcs_emulator_host)

    injected = [(request.kind, fault) for request, fault, _, _ in proxy.log if fault]
    print(f"{len(injected)} faults injected in {len(proxy.log)} requests")
    assert {fault for kind, fault in injected if kind == "download"} == {*READ_FAULTS, "delete"}
    assert {kind for kind, _ in injected} >= {"list", "upload", "metadata", "copy", "delete"}
    assert ("upload", "lose_reply") in injected

    rows = {}
    for name in summary["output_files"]:
        for line in storage.read_bytes(f"{output}/r/{name}").decode("utf-8").splitlines():
            row = json.loads(line)
            assert row["path"] not in rows, f"{row['path']} written twice"
            rows[row["path"]] = row
    every = {f"{gcs_bucket}/images/{path.relative_to(local).as_posix()}" for path in files}
    assert set(rows) == every
    vanished = rows.pop(f"{gcs_bucket}/{VANISHES}")
    assert vanished["reason"] == reading.READ_ERROR and "404" in vanished["detail"]
    assert all("reason" not in row for row in rows.values())  # every other file scored, none dead-lettered
    assert (summary["scored"], summary["failed_by_reason"]) == (len(files) - 1, {reading.READ_ERROR: 1})
    assert storage.exists(f"{output}/r/{score.SUMMARY_FILE}")


def test_preprocessing_retries_transient_gcs_errors_and_dead_letters_a_deleted_object(gcs_bucket, gcs_emulator_host,
                                                                                     tmp_path, monkeypatch):
    local = tmp_path / "images"
    files = corpus.write_easy_dataset(local, per_class=8, size=32)
    upload_tree(local, f"{gcs_bucket}/images")
    output = f"{gcs_bucket}/data"
    with FaultyProxy(gcs_emulator_host, _faults) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        metadata = preprocess_here("--input", f"{gcs_bucket}/images", "--output_dir", output, "--image_size", 32,
                                   "--files_per_batch", 4)
        point_gcs_at(monkeypatch, gcs_emulator_host)

    injected = {(request.kind, fault) for request, fault, _, _ in proxy.log if fault}
    assert {fault for kind, fault in injected if kind == "download"} == {*READ_FAULTS, "delete"}
    assert {kind for kind, _ in injected} >= {"list", "upload", "metadata"}
    sources, rejections = read_dataset(output)
    every = {f"{gcs_bucket}/images/{path.relative_to(local).as_posix()}" for path in files}
    assert set(sources) == every - {f"{gcs_bucket}/{VANISHES}"}  # each written once (read_dataset checks)
    assert {path: row["reason"] for path, row in rejections.items()} == {f"{gcs_bucket}/{VANISHES}": reading.READ_ERROR}
    assert "404" in rejections[f"{gcs_bucket}/{VANISHES}"]["detail"]
    assert metadata["rejected"] == {reading.READ_ERROR: 1} and metadata["added"] == len(files) - 1
