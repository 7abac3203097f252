"""One huge or hostile file costs that file, in both jobs: a file over the byte cap is rejected without being read (a
3 GiB "video" under a .jpg name), and a decoder that allocates past the child's address-space limit (RLIMIT_AS) fails
on that file only, while a real photo at the pixel limit still decodes under that limit.

The allocating decoder is a stand-in (tests/reliability/faulty.py): it asks for 8 GiB with np.empty and never touches
it, so the test costs no real memory; only the limit stands between it and success. The 3 GiB file is sparse.
"""

import concurrent.futures
import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from beam_pipelines import file_listing, imaging, isolation, reading
from tests import corpus
from tests.conftest import point_gcs_at, upload_tree
from tests.gcs_servers import FaultyProxy
from tests.reliability import faulty
from tests.reliability.conftest import FAULTY_DECODER, preprocess_here, read_dataset, read_outcomes, score_here

pytestmark = pytest.mark.slow

GIB = 2**30


@contextlib.contextmanager
def monkeypatch_env(name: str, value: str):
    """os.environ[name] = value for the duration (the decoder child inherits the environment when it starts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(name, value)
        yield


def test_a_file_over_the_byte_cap_and_a_decoder_over_its_memory_limit_each_cost_one_file(tiny_export, tmp_path,
                                                                                          monkeypatch):
    images, output = tmp_path / "images", tmp_path / "scores"
    good = corpus.write_easy_dataset(images, per_class=3, size=32)
    video = images / "cat" / "holiday.jpg"
    with open(video, "wb") as handle:
        handle.truncate(3 * GIB)  # sparse: 3 GiB as far as anyone listing or reading it can tell
    allocates = images / "dog" / "allocates.jpg"
    allocates.write_bytes(faulty.ALLOCATE + good[0].read_bytes())
    monkeypatch.setenv(isolation.FAULT_INJECTION_ENV, FAULTY_DECODER)

    summary = score_here("--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "r")

    predictions, errors = read_outcomes(output / "r")
    assert set(predictions) == {str(path) for path in good}  # the job went on
    assert {path: row["reason"] for path, row in errors.items()} == {
        str(video): reading.FILE_TOO_LARGE, str(allocates): isolation.DECODER_CRASH}
    assert "3,221,225,472 bytes is over the cap" in errors[str(video)]["detail"]
    assert "out of memory" in errors[str(allocates)]["detail"]
    assert summary["failed_by_reason"] == {reading.FILE_TOO_LARGE: 1, isolation.DECODER_CRASH: 1}


def test_preprocessing_rejects_a_file_over_the_byte_cap_and_a_decoder_over_its_memory_limit_and_goes_on(tmp_path,
                                                                                                       monkeypatch):
    images, output = tmp_path / "images", tmp_path / "data"
    good = corpus.write_easy_dataset(images, per_class=3, size=32)
    video = images / "dog" / "holiday.jpg"
    with open(video, "wb") as handle:
        handle.truncate(3 * GIB)
    allocates = images / "cat" / "allocates.jpg"
    allocates.write_bytes(faulty.ALLOCATE + corpus.encode(corpus.easy_pixels(0, 99, 32)))
    monkeypatch.setenv(isolation.FAULT_INJECTION_ENV, FAULTY_DECODER)

    metadata = preprocess_here("--input", images, "--output_dir", output, "--image_size", 32)

    sources, rejections = read_dataset(output)
    assert set(sources) == {str(path) for path in good}
    assert {path: row["reason"] for path, row in rejections.items()} == {
        str(video): reading.FILE_TOO_LARGE, str(allocates): isolation.DECODER_CRASH}
    assert "3,221,225,472 bytes is over the cap" in rejections[str(video)]["detail"]
    assert metadata["rejected"] == {reading.FILE_TOO_LARGE: 1, isolation.DECODER_CRASH: 1}


def test_an_object_over_the_byte_cap_on_gcs_is_never_downloaded(gcs_bucket, gcs_emulator_host, tiny_export, tmp_path,
                                                                 monkeypatch):
    local = tmp_path / "images"
    good = corpus.write_easy_dataset(local, per_class=2, size=32)
    (local / "cat" / "huge.jpg").write_bytes(good[0].read_bytes() + bytes(3 * 2**20))  # over --max_file_mb 2
    upload_tree(local, f"{gcs_bucket}/images")
    with FaultyProxy(gcs_emulator_host, faults=lambda request: None) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        summary = score_here("--model", tiny_export, "--input", f"{gcs_bucket}/images", "--output_dir", tmp_path /
                             "scores", "--run_id", "r", "--max_file_mb", 2)

    predictions, errors = read_outcomes(tmp_path / "scores" / "r")
    assert errors[f"{gcs_bucket}/images/cat/huge.jpg"]["reason"] == reading.FILE_TOO_LARGE
    assert len(predictions) == summary["scored"] == len(good)
    assert proxy.requests("download", "images/cat/huge.jpg") == []  # refused from its listed size: not one byte read
    assert len(proxy.requests("download")) == len(good)  # the proxy did see the other reads


def test_files_in_flight_behind_a_decoder_out_of_memory_get_their_own_pixels(tmp_path):
    """The child survives a MemoryError (Python recovers from a failed allocation) and answers for the files sent
    behind that one: each answer must go to its own file, not shift by one onto the next."""
    pictures = [corpus.encode(corpus.easy_pixels(i % 2, 300 + i, 24)) for i in range(6)]
    stream = [("good-0", pictures[0]), ("allocates", faulty.ALLOCATE + pictures[1]), *[
        (f"good-{i}", pictures[i]) for i in range(2, 6)]]
    limit = isolation.memory_limit(10**6, 2**20)
    with monkeypatch_env(isolation.FAULT_INJECTION_ENV, FAULTY_DECODER), \
            isolation.DecodeRunner(30, memory_limit_bytes=limit) as decoder:
        outcomes = list(decoder.decode_stream(stream, (24, 24), 10**6, in_flight=4))
    assert [tag for tag, _ in outcomes] == [tag for tag, _ in stream]
    assert outcomes[1][1][:2] == ("rejected", isolation.DECODER_CRASH)
    for (tag, outcome), (_, data) in zip(outcomes, stream, strict=True):
        if tag != "allocates":
            expected = imaging.decode_image(data, (24, 24)).pixels
            assert outcome[0] == "ok" and np.array_equal(outcome[1].pixels, expected), tag


def test_a_file_that_grew_past_the_cap_after_it_was_listed_is_read_no_further_than_the_cap(tmp_path):
    """The decoder child reads local files itself: one listed small that is now 4 GiB (sparse) is refused as
    file_too_large after reading the cap and one byte; read whole, it would not even fit the child's address space."""
    grown = tmp_path / "grown.jpg"
    with open(grown, "wb") as handle:
        handle.truncate(4 * GIB)
    listed = file_listing.FileRef(str(grown), 1000, 0.0, 1)  # what the listing saw before it grew
    cap = 2**20
    decoder = isolation.DecodeRunner(60, memory_limit_bytes=isolation.memory_limit(10**6, cap))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            [(_, outcome)] = reading.decoded([listed], decoders=[decoder], pool=pool, size=(24, 24),
                                             max_pixels=10**6, max_bytes=cap)
        finally:
            decoder.close()
    assert outcome[:2] == ("rejected", reading.FILE_TOO_LARGE), outcome
    assert "grew after it was listed" in outcome[2]


def test_a_photo_at_the_pixel_limit_still_decodes_under_the_address_space_limit():
    """The limit must bound a hostile file, not refuse a real photo: a 7000x7000 picture (49 MP, just under the
    default 50 MP) in both lossless and JPEG form decodes in the child with the default limits."""
    side = 7000
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    picture = Image.fromarray(np.stack([np.tile(ramp[:, None], (1, side)), np.tile(ramp[None, :], (side, 1)),
                                        np.full((side, side), 90, np.uint8)], axis=-1))
    limit = isolation.memory_limit(imaging.DEFAULT_MAX_PIXELS, 3 * imaging.DEFAULT_MAX_PIXELS)
    with isolation.DecodeRunner(120, memory_limit_bytes=limit) as decoder:
        for fmt, params in (("PNG", {"compress_level": 1}), ("JPEG", {"quality": 90})):
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, **params)
            outcome = decoder.decode(buffer.getvalue(), (32, 32), imaging.DEFAULT_MAX_PIXELS)
            assert outcome[0] == "ok", (fmt, outcome)
        assert decoder.restarts == 0
