"""reading.py: every file of a batch comes out exactly once, decoded or rejected with its reason; listing problems,
files over the byte cap (by their listed size, or grown since), vanished files and read errors become rejections,
and nothing about one file raises. A FIFO is never opened."""

import concurrent.futures
import os
import threading

import pytest

from beam_pipelines import file_listing, imaging, isolation, reading
from tests import corpus

SIZE = (16, 16)


@pytest.fixture(params=[(0, 1), (30, 1), (30, 2)], ids=["in_process", "one_child", "two_children"])
def decoders(request):
    timeout, children = request.param
    runners = [isolation.DecodeRunner(timeout) for _ in range(children)]
    yield runners
    for runner in runners:
        runner.close()


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(reading.READ_THREADS) as executor:
        yield executor


def _outcomes(refs, decoders, pool, max_bytes=10_000) -> dict:
    results = list(reading.decoded(refs, decoders=decoders, pool=pool, size=SIZE, max_pixels=10**6,
                                   max_bytes=max_bytes))
    paths = [ref.path for ref, _ in results]
    assert sorted(paths) == sorted(ref.path for ref in refs), "a file lost or given twice"
    return {ref.path: outcome for ref, outcome in results}


def _ref(path) -> file_listing.FileRef:
    info = os.stat(path)
    return file_listing.FileRef(str(path), info.st_size, info.st_mtime, info.st_mtime_ns)


def test_every_file_comes_out_once_decoded_or_rejected_with_its_reason(tmp_path, decoders, pool):
    good = [_ref(path) for path in corpus.write_easy_dataset(tmp_path, per_class=3, size=24)]
    (tmp_path / "text.jpg").write_bytes(b"not a picture")
    grown = tmp_path / "grown.jpg"
    grown.write_bytes(corpus.encode(corpus.easy_pixels(0, 1, 24)))
    grown_ref = _ref(grown)
    grown.write_bytes(grown.read_bytes() + bytes(20_000))  # it grew after it was listed
    vanished = _ref(good[0].path)._replace(path=str(tmp_path / "vanished.jpg"))
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(corpus.encode(corpus.easy_pixels(1, 2, 24)))  # small: only its listed size is huge
    problems = [file_listing.FileRef(str(tmp_path / name), 0, 0.0, 0, problem)
                for name, problem in (("link.jpg", file_listing.BROKEN_SYMLINK), ("loop", file_listing.SYMLINK_LOOP),
                                      ("locked", file_listing.UNREADABLE_FOLDER))]
    refs = [*good, _ref(tmp_path / "text.jpg"), grown_ref, vanished, *problems,
            file_listing.FileRef(str(huge), 10**9, 0.0, 1),  # listed as huge: refused from its size, never read
            file_listing.FileRef(str(tmp_path), 4096, 0.0, 1)]  # a folder where a file was listed

    outcomes = _outcomes(refs, decoders, pool)

    for ref in good:
        assert outcomes[ref.path][0] == "ok" and outcomes[ref.path][1].pixels.shape == (*SIZE, 3)
    reasons = {path: outcome[1] for path, outcome in outcomes.items() if outcome[0] == "rejected"}
    assert reasons == {str(tmp_path / "text.jpg"): imaging.NOT_AN_IMAGE, str(grown): reading.FILE_TOO_LARGE,
                       vanished.path: reading.READ_ERROR, **{ref.path: ref.problem for ref in problems},
                       str(huge): reading.FILE_TOO_LARGE, str(tmp_path): reading.READ_ERROR}
    details = {path: outcome[2] for path, outcome in outcomes.items() if outcome[0] == "rejected"}
    assert "grew after it was listed" in details[str(grown)]
    assert "1,000,000,000 bytes is over the cap of 10,000" in details[str(huge)]
    assert details[vanished.path].startswith("FileNotFoundError")
    assert details[str(tmp_path)].startswith("IsADirectoryError")
    assert "does not exist" in details[str(tmp_path / "link.jpg")]


def test_a_fifo_listed_among_the_files_is_never_opened(tmp_path, pool):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    [listed] = list(file_listing.list_files(str(tmp_path)))
    results = []

    def read():
        with isolation.DecodeRunner(0) as runner:
            results.extend(reading.decoded([listed], decoders=[runner], pool=pool, size=SIZE, max_pixels=10**6,
                                           max_bytes=10_000))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # the FIFO was opened and the read waits for a writer: give it one, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("the FIFO was opened: a worker reading it would block for ever")
    [(_, outcome)] = results
    assert outcome[:2] == ("rejected", file_listing.NOT_A_FILE) and "never read" in outcome[2]


class _CountingRequests:
    """The real request pipe, with each message's files and bytes counted on the way in."""

    def __init__(self, connection, messages):
        self.connection, self.messages = connection, messages

    def send(self, message):
        self.messages.append((len(message), sum(isolation._payload(data) for data, _, _ in message)))
        self.connection.send(message)

    def close(self):
        self.connection.close()


def counted_runner(messages):
    runner = isolation.DecodeRunner(30)
    start = runner._start

    def start_and_count():
        start()
        runner._requests = _CountingRequests(runner._requests, messages)

    runner._start = start_and_count
    return runner


def test_files_go_to_the_child_several_to_a_message_within_the_byte_cap(tmp_path, monkeypatch):
    paths = corpus.write_easy_dataset(tmp_path, per_class=20, size=24)  # 40 photos
    local = [(path, isolation.LocalFile(str(path), 10**6)) for path in paths]
    messages = []
    with counted_runner(messages) as runner:
        outcomes = list(runner.decode_stream(local, SIZE, 10**6, in_flight=16))
    assert [tag for tag, _ in outcomes] == paths and all(outcome[0] == "ok" for _, outcome in outcomes)
    # 16 first, then a refill whenever fewer than 8 are unanswered: 40 files in 4 messages, not 40
    assert sum(files for files, _ in messages) == 40 and max(files for files, _ in messages) == 16
    assert len(messages) <= 5, messages

    # Remote files travel as bytes: at most BYTES_IN_FLIGHT of them in flight (beyond the first file)
    encoded = [(path, path.read_bytes()) for path in paths]
    largest = max(len(data) for _, data in encoded)
    monkeypatch.setattr(isolation, "BYTES_IN_FLIGHT", 3 * largest)
    messages.clear()
    with counted_runner(messages) as runner:
        outcomes = list(runner.decode_stream(encoded, SIZE, 10**6, in_flight=16))
    assert [tag for tag, _ in outcomes] == paths and all(outcome[0] == "ok" for _, outcome in outcomes)
    assert sum(files for files, _ in messages) == 40 and all(sent <= 3 * largest for _, sent in messages)
    assert max(files for files, _ in messages) >= 2  # still several to a message when they fit
