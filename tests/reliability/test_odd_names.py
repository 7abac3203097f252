"""File names that are not valid UTF-8 (a Latin-1 name copied from an old camera card, bytes from a broken unzip) are
carried through both jobs: listed, read, scored / written or dead-lettered like any other file, never failing the job,
and every output (prediction rows, error rows, commit markers, the summary, the incremental record; the TFRecords'
source paths, the rejection lists, metadata.json) stays valid UTF-8, with the undecodable bytes shown as backslash
escapes (storage.display_path).
"""

import json
import os

import pytest

from beam_pipelines import imaging, incremental, isolation, score
from tests import corpus
from tests.reliability import faulty
from tests.reliability.conftest import FAULTY_DECODER, preprocess_here, read_dataset, read_outcomes, score_here
from trainer import storage

pytestmark = pytest.mark.slow


def _write(folder, raw_name: bytes, content: bytes) -> str:
    """Writes a file whose name is raw bytes; returns its path as Python holds it (surrogate escapes)."""
    path = os.path.join(os.fsencode(folder), raw_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    return os.fsdecode(path)


def _all_valid_utf8(root) -> int:
    """Checks that every text file under root (JSON, JSON lines, the `latest` pointer) is valid UTF-8; returns how
    many there are. (The TFRecords' source paths are checked by read_dataset.)"""
    checked = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith((".json", ".jsonl", "latest")):
                continue
            with open(os.path.join(folder, name), "rb") as handle:
                handle.read().decode("utf-8")  # raises on invalid bytes
            checked += 1
    return checked


def test_names_that_are_not_utf8_are_scored_or_dead_lettered_and_every_output_is_valid_utf8(tiny_export, tmp_path,
                                                                                             monkeypatch):
    images, output = tmp_path / "images", tmp_path / "scores"
    good = [str(path) for path in corpus.write_easy_dataset(images, per_class=2, size=32)]
    picture = corpus.encode(corpus.easy_pixels(1, 7, 32))
    odd_good = [_write(images, b"dog/caf\xe9.jpg", picture),  # Latin-1
                _write(images, b"dog/\xff\xfe-\x80.png", corpus.encode(corpus.easy_pixels(1, 8, 32), "PNG")),
                _write(images, b"d\xe9j\xe0/photo.jpg", picture)]  # in a folder whose own name is not UTF-8
    not_an_image = _write(images, b"dog/notes-\xe9.jpg", b"just text")
    hangs = _write(images, b"cat/hangs-\xe9.jpg", faulty.HANG)  # a decoder timeout: retried by the next run
    monkeypatch.setenv(isolation.FAULT_INJECTION_ENV, FAULTY_DECODER)
    flags = ["--model", tiny_export, "--input", images, "--output_dir", output, "--skip_scored", output,
             "--decode_timeout_seconds", 1, "--files_per_batch", 3]

    summary = score_here(*flags, "--run_id", "r1")

    predictions, errors = read_outcomes(output / "r1")
    shown = {path: storage.display_path(path) for path in [*odd_good, not_an_image, hangs]}
    assert shown[odd_good[0]].endswith("/dog/caf\\xe9.jpg")
    assert set(predictions) == set(good) | {shown[path] for path in odd_good}
    assert {path: row["reason"] for path, row in errors.items()} == {
        shown[not_an_image]: imaging.NOT_AN_IMAGE, shown[hangs]: isolation.DECODER_TIMEOUT}
    assert summary["matched"] == len(good) + 5 == summary["scored"] + summary["failed"]
    assert _all_valid_utf8(output) >= 4

    # The next incremental run skips what was accounted for and retries the file that timed out, by its name.
    (images / "cat" / "new.jpg").write_bytes(picture)
    summary = score_here(*flags, "--run_id", "r2")
    predictions, errors = read_outcomes(output / "r2")
    assert set(predictions) == {str(images / "cat" / "new.jpg")}
    assert set(errors) == {shown[hangs]}
    assert summary["skipped"] == len(good) + 4
    state = json.loads((output / incremental.STATE_DIR / "model-1700000000.json").read_text(encoding="utf-8"))
    assert len(state["retry"]) == 1
    assert json.loads((output / "r2" / score.SUMMARY_FILE).read_text(encoding="utf-8"))["run_id"] == "r2"
    assert _all_valid_utf8(output) >= 8


def test_preprocessing_carries_names_that_are_not_utf8_into_valid_records_and_grows_the_dataset_over_them(tmp_path):
    images, output = tmp_path / "images", tmp_path / "data"
    good = [str(path) for path in corpus.write_easy_dataset(images, per_class=3, size=32)]
    odd_good = [_write(images, b"cat/caf\xe9.jpg", corpus.encode(corpus.easy_pixels(0, 71, 32))),
                _write(images, b"dog/\xff\xfe-\x80.png", corpus.encode(corpus.easy_pixels(1, 72, 32), "PNG"))]
    not_an_image = _write(images, b"dog/notes-\xe9.jpg", b"just text")
    flags = ["--input", images, "--output_dir", output, "--image_size", 16, "--skip_if_current"]

    first = preprocess_here(*flags)

    sources, rejections = read_dataset(output)  # fails on bytes that are not UTF-8
    shown = {path: storage.display_path(path) for path in [*odd_good, not_an_image]}
    assert set(sources) == set(good) | {shown[path] for path in odd_good}  # the records' source: valid UTF-8
    assert {path: row["reason"] for path, row in rejections.items()} == {shown[not_an_image]: imaging.NOT_AN_IMAGE}
    assert first["read"] == len(good) + 3 and first["added"] == len(good) + 2
    texts = _all_valid_utf8(output)
    assert texts >= 4

    # `make preprocess` always passes --skip_if_current: the next version joins the listing with this one by path.
    (images / "cat" / "new.jpg").write_bytes(corpus.encode(corpus.easy_pixels(0, 73, 32)))
    second = preprocess_here(*flags)
    assert (second["new"], second["unchanged"], second["unchanged_rejected"]) == (1, len(good) + 2, 1)
    sources, rejections = read_dataset(output)
    assert set(sources) == set(good) | {shown[path] for path in odd_good} | {str(images / "cat" / "new.jpg")}
    assert set(rejections) == {shown[not_an_image]}
    assert _all_valid_utf8(output) > texts
