"""Read a batch of files ahead in threads and decode them in the isolated child, while the caller works on results.

Both jobs process a FileBatch through `decoded(...)`: it yields `(ref, outcome)` for every file of the batch, where
outcome is `("ok", value)` (the decoder's result) or `("rejected", reason, detail)`. Three things overlap:
- reads: up to READ_AHEAD files are being read by READ_THREADS threads (on GCS each read is a request of tens of
  milliseconds: read one at a time, a worker would mostly wait);
- decoding: a feeder thread per decoder child (isolation.DecodeRunner, up to 16 files in flight each, sent several
  to a message) sends it the bytes and queues its answers, HAND_OFF at a time, so N children decode on N cores;
- the caller's own work on the answers (the model on a batch of pixels, writing records), which releases the GIL in
  TensorFlow and in file I/O.
A file that cannot be used costs that file only: it comes out rejected with its reason, never as an exception.
"""

import collections
import concurrent.futures
import queue
import threading
import weakref

from beam_pipelines import file_listing, isolation
from trainer import storage

READ_THREADS = 8
READ_AHEAD = 32  # files being read at once: enough to hide GCS latency, few enough to bound memory
QUEUE_SIZE = 256  # decoded results waiting for the caller (pixels of a 180x180 image: 97 KB each)
HAND_OFF = 16  # results a feeder thread hands the caller at once: one queue hand-off (a thread wake-up) per 16 files
READ_ERROR = isolation.READ_ERROR
FILE_TOO_LARGE = isolation.FILE_TOO_LARGE
REASONS = (READ_ERROR, FILE_TOO_LARGE, *file_listing.LISTING_PROBLEMS)

_LISTING_DETAIL = {
    file_listing.BROKEN_SYMLINK: "a symbolic link whose target does not exist",
    file_listing.SYMLINK_LOOP: "a symbolic link to a folder listed already (a loop, or the same folder twice): its "
                               "files are counted once, under the first path",
    file_listing.NOT_A_FILE: "not a regular file (a FIFO, socket or device): never read, it could block forever",
    file_listing.UNREADABLE_FOLDER: "a folder that could not be listed (permissions?): its files are not counted",
}


def rejected(reason: str, detail: str) -> tuple:
    return ("rejected", reason, detail)


def _early(ref: file_listing.FileRef, max_bytes: int):
    """A rejection known from the listing alone, or None."""
    if ref.problem:
        return rejected(ref.problem, _LISTING_DETAIL.get(ref.problem, ref.problem))
    if ref.size > max_bytes:
        return rejected(FILE_TOO_LARGE, f"{ref.size:,} bytes is over the cap of {max_bytes:,} (--max_file_mb)")
    return None


def _read(ref: file_listing.FileRef, max_bytes: int):
    """The file's bytes, or a rejection."""
    try:
        return storage.read_bytes(ref.path, limit=max_bytes)
    except storage.FileTooLarge as error:
        return rejected(FILE_TOO_LARGE, f"{error} (it grew after it was listed; cap: --max_file_mb)")
    except Exception as error:  # noqa: BLE001 - whatever storage raised after its retries is this file's problem
        return rejected(READ_ERROR, f"{type(error).__name__}: {error}")


def read_ahead(refs, max_bytes: int, pool: concurrent.futures.Executor, window: int = READ_AHEAD):
    """Yields (ref, what to decode or a rejection) for each ref, in order: a remote file's bytes, read with up to
    `window` reads running in `pool`; a local file as an isolation.LocalFile, which the decoder process reads itself
    (no bytes through this process: on local disk that is the cheaper path by far)."""
    pending = collections.deque()
    refs = iter(refs)
    while True:
        while len(pending) < window:
            ref = next(refs, None)
            if ref is None:
                break
            early = _early(ref, max_bytes)
            if early is not None or not storage.is_remote(ref.path):
                pending.append((ref, early or isolation.LocalFile(ref.path, max_bytes)))
            else:
                pending.append((ref, pool.submit(_read, ref, max_bytes)))
        if not pending:
            return
        ref, item = pending.popleft()
        yield ref, item.result() if isinstance(item, concurrent.futures.Future) else item


class _End:
    def __init__(self, error: BaseException | None = None):
        self.error = error


def decoded(refs, *, decoders, pool: concurrent.futures.Executor, size, max_pixels: int, max_bytes: int):
    """Yields (ref, outcome) for every ref, in no set order (rejections before decoding come out first).

    `decoders` (isolation.DecodeRunner, one or more): each is fed by its own thread from one shared read-ahead
    stream, so N decoder processes decode N files at a time, each taking the next file when it is free.
    """
    decoders = list(decoders)
    results = queue.Queue(maxsize=max(1, QUEUE_SIZE // HAND_OFF))  # lists of up to HAND_OFF (ref, outcome)
    stop = threading.Event()
    reads = read_ahead(refs, max_bytes, pool)
    lock = threading.Lock()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def readable():
        while not stop.is_set():
            with lock:
                item = next(reads, None)
            if item is None:
                return
            ref, data = item
            if type(data) is tuple:  # a rejection (a LocalFile is a tuple too, but goes to the decoder)
                if not put([(ref, data)]):
                    return
                continue
            yield ref, data

    def feed(decoder):
        try:
            handed = []
            for ref, outcome in decoder.decode_stream(readable(), size, max_pixels):
                handed.append((ref, outcome))
                if len(handed) == HAND_OFF:
                    if not put(handed):
                        return
                    handed = []
            if not handed or put(handed):
                put(_End())
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread, which raises it
            put(_End(error))

    feeders = [threading.Thread(target=feed, args=(decoder,), name="decode-feeder", daemon=True)
               for decoder in decoders]
    for feeder in feeders:
        feeder.start()
    try:
        running = len(feeders)
        while running:
            item = results.get()
            if isinstance(item, _End):
                running -= 1
                if item.error is not None:
                    raise item.error
                continue
            yield from item
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join()


class Decoding:
    """A worker's decoder children and read threads, made once (DoFn.setup, or a model handler's first batch) and
    closed when the worker is done with them (or garbage-collected)."""

    def __init__(self, processes: int, timeout: float, then_fn: str, memory_limit_bytes: int):
        self.decoders = [isolation.DecodeRunner(timeout, then_fn=then_fn, memory_limit_bytes=memory_limit_bytes)
                         for _ in range(max(1, processes))]
        self.pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read")
        self._finalizer = weakref.finalize(self, _close, self.decoders, self.pool)

    def decoded(self, refs, *, size, max_pixels: int, max_bytes: int):
        return decoded(refs, decoders=self.decoders, pool=self.pool, size=size, max_pixels=max_pixels,
                       max_bytes=max_bytes)

    def close(self) -> None:
        self._finalizer()


def _close(decoders, pool) -> None:
    for decoder in decoders:
        decoder.close()
    pool.shutdown(wait=False, cancel_futures=True)
