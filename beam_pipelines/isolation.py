"""Run the image decoder in a child process, so a file that hangs or crashes it costs that file, not the job.

Pillow and its C codecs (libjpeg-turbo, libpng, libwebp, Pillow's own GIF and BMP decoders) parse untrusted bytes.
A codec bug can loop forever or kill the process (a segfault, an abort); in-process, either would stall or fail a
Beam worker and, after the runner's retries, the whole job. `DecodeRunner` keeps one long-lived child process per
DoFn instance, sends it files over a pipe (in order, a few ahead) and waits at most `timeout` seconds for each
answer. When the time is up, or the child dies, the child is killed and replaced and the file is rejected as
`decoder_timeout` / `decoder_crash`; the next file goes to a new child.

The child is a fresh interpreter (`python -m beam_pipelines.isolation`), not a multiprocessing `spawn`/`fork`
child: Beam workers run threads, which `fork` does not copy safely, and `spawn` re-imports the launcher's
`__main__`, which breaks any launcher script without an `if __name__ == "__main__"` guard. It gets the parent's
`sys.path`, so whatever the parent can import (the decode function included) it can too.

Cost: one reply per file (the decoded pixels out, ~0.1 ms for a 180x180 result against 0.5-2 ms of decoding), and
requests several files to a message, not waited for: `decode_stream` keeps up to IN_FLIGHT files in flight and refills
half of them at a time, so the child decodes the next file while the worker reads files and builds records
(preprocessing pets-180: 29 s -> 25 s wall, 41 s -> 37 s of CPU with 4 in flight one per message, old and new code
run back to back; then 13.3-14.3 s -> 12.6-12.7 s wall and 100k -> 30k voluntary context switches with 16 in flight,
8 to a message, and the results handed on 16 at a time, reading.HAND_OFF). A child start costs ~0.3 s of CPU (an
interpreter importing numpy and Pillow) and ~40 MB of memory per DoFn instance (one per Beam worker thread that
decodes), paid again only after a failure.

The child runs under an address-space limit (RLIMIT_AS, `memory_limit`): a file that makes the decoder allocate past
it fails with MemoryError or kills the child, and is rejected (`decode_error` / `decoder_crash`) instead of taking the
worker's memory. An optional second function (`then_fn`, "module:function") runs on the decoded image in the child
too, so that only its (smaller) result crosses the pipe: preprocessing sends back the record's JPEG bytes and hashes
instead of the pixels (`imaging.record_parts`), which cut the pipe's cost ~7x and moved the encoding off the Beam
worker (measured with py-spy).

The decoder itself is always `imaging.decode_image`; no command-line flag can name other code. The test suite, and
only it, sets FAULT_INJECTION_ENV to a "module:function" to stand in for it (a decoder that hangs or aborts).
"""

import collections
import importlib
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import NamedTuple

from beam_pipelines import imaging

READ_ERROR = "read_error"  # the file could not be read (reading.py reports it too, for files it reads itself)
FILE_TOO_LARGE = "file_too_large"
DECODER_TIMEOUT = "decoder_timeout"
DECODER_CRASH = "decoder_crash"
REASONS = (DECODER_TIMEOUT, DECODER_CRASH)
DEFAULT_DECODE_FN = "beam_pipelines.imaging:decode_image"
FAULT_INJECTION_ENV = "CATSDOGS_TEST_DECODE_FN"  # set by tests only: a "module:function" replacing the decoder
_STARTUP_SECONDS = 120
# Files sent ahead to the child by decode_stream: enough to keep it busy, few enough to bound memory (and at most
# BYTES_IN_FLIGHT of file bytes, beyond the first file: a LocalFile's are read by the child). They go in messages of
# about half of that (a refill once half are answered): one wake-up of the child's request reader per ~8 files.
IN_FLIGHT = 16
BYTES_IN_FLIGHT = 8 * 2**20
_READY = "ready"


def load_function(path: str):
    """"package.module:function" -> the function. Raises ValueError with what to pass on a bad path."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"expected module:function, e.g. {DEFAULT_DECODE_FN} (got {path!r})")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"{path!r} is not a function")
    return function


class LocalFile(NamedTuple):
    """A request naming a local file for the decoding process to read itself, at most `limit` bytes: no bytes cross
    the pipe and no thread of the worker reads it (what a remote file needs: its bytes are read ahead by the worker)."""

    path: str
    limit: int


def read_local(file: LocalFile) -> bytes:
    """The file's bytes; ImageRejected as read_error / file_too_large."""
    try:
        with open(file.path, "rb") as handle:
            data = handle.read(file.limit + 1)
    except OSError as error:
        raise imaging.ImageRejected(READ_ERROR, f"{type(error).__name__}: {error}") from None
    if len(data) > file.limit:
        raise imaging.ImageRejected(FILE_TOO_LARGE, f"more than {file.limit:,} bytes (it grew after it was listed; "
                                                    f"cap: --max_file_mb)")
    return data


def decode_outcome(decode, data, size, max_pixels: int, then=None):
    """("ok", DecodedImage or then(DecodedImage)) or ("rejected", reason, detail): plain tuples, since ImageRejected
    does not pickle. `data` is the file's bytes, or a LocalFile to read here."""
    try:
        if isinstance(data, LocalFile):
            data = read_local(data)
        decoded = decode(data, size, max_pixels)
        return ("ok", then(decoded) if then is not None else decoded)
    except imaging.ImageRejected as rejected:
        return ("rejected", rejected.reason, rejected.detail)
    except MemoryError:
        return ("rejected", DECODER_CRASH, "the decoder ran out of memory on this file (its process runs under an "
                                           "address-space limit sized from --max_pixels and --max_file_mb)")
    except Exception as error:  # noqa: BLE001 - one poisoned file must not fail the job
        return ("rejected", imaging.DECODE_ERROR, f"unexpected {type(error).__name__}: {error}")


def decoder_function() -> str:
    """imaging.decode_image, or the stand-in the test suite names in FAULT_INJECTION_ENV."""
    return os.environ.get(FAULT_INJECTION_ENV) or DEFAULT_DECODE_FN


def memory_limit(max_pixels: int, max_file_bytes: int) -> int:
    """Address space the decoder child may use: the interpreter with numpy and Pillow (~160 MB of address space),
    the encoded file twice (received, then wrapped), and 8 bytes per pixel at the pixel limit (the RGB image plus
    one converted copy)."""
    return 256 * 2**20 + 2 * max_file_bytes + 8 * max_pixels


def limit_memory(limit_bytes: int) -> None:
    if limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def serve(requests: Connection, replies: Connection, decode_fn: str, then_fn: str = "",
          memory_limit_bytes: int = 0) -> None:
    """The child's loop: (data, size, max_pixels) in, an outcome out, in order, until the parent closes its end.

    A reader thread takes requests off the pipe as they come, so the parent can send the next files while this
    one decodes (DecodeRunner.decode_stream) without either side ever blocking on a full pipe: the parent bounds how
    many are in flight, and whatever it sends is read at once.
    """
    decode = load_function(decode_fn)
    then = load_function(then_fn) if then_fn else None
    limit_memory(memory_limit_bytes)  # after the imports: they are not the file's doing
    queued = queue.SimpleQueue()

    def read():
        while True:
            try:
                queued.put(requests.recv())
            except (EOFError, OSError):
                queued.put(None)
                return

    threading.Thread(target=read, name="requests", daemon=True).start()
    replies.send(_READY)
    while (request := queued.get()) is not None:
        for data, size, max_pixels in request:  # a message holds one or more files (decode_stream refills in bulk)
            replies.send(decode_outcome(decode, data, size, max_pixels, then))


def _payload(data) -> int:
    """Bytes a request carries through the pipe: the file's, or none for a LocalFile (the child reads it)."""
    return 0 if isinstance(data, LocalFile) else len(data)


class DecodeRunner:
    """decode(data, size, max_pixels) in a reused child process, with a per-file timeout in seconds.

    `timeout=0` decodes in this process (no isolation, no IPC): for debugging and for callers that already run
    each file in its own process. `then_fn` ("module:function", optional) is applied to each decoded image in the
    same place, and its result is what `decode` returns.
    """

    def __init__(self, timeout: float, then_fn: str | None = None, memory_limit_bytes: int = 0):
        self.timeout = timeout
        self.decode_fn = decoder_function()
        self.then_fn = then_fn or ""
        self.memory_limit_bytes = memory_limit_bytes
        self.restarts = 0
        self._process = None
        self._requests = self._replies = None
        self._in_process = load_function(self.decode_fn) if not timeout else None
        self._then = load_function(then_fn) if then_fn else None

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # One BLAS thread: the child only decodes, and each BLAS thread reserves address space under the limit.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path or os.getcwd() for path in sys.path),
                   OPENBLAS_NUM_THREADS="1")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "beam_pipelines.isolation", str(request_read), str(reply_write),
                 self.decode_fn, self.then_fn, str(self.memory_limit_bytes)],
                pass_fds=(request_read, reply_write), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(request_read)
            os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        # Start-up (a fresh interpreter importing numpy and Pillow) is not charged to the first file's timeout.
        try:
            ready = self._replies.poll(_STARTUP_SECONDS) and self._replies.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            exit_code = self._process.poll()
            self._stop()
            raise RuntimeError(f"the decoder process ({self.decode_fn}) did not start within {_STARTUP_SECONDS} s "
                               f"(exit code {exit_code}); see its error above")

    def _stop(self, kill: bool = False) -> int | None:
        """Closes the pipes and reaps the child, killing it at once when `kill`, else if it has not left within 2 s
        (a healthy child leaves when its pipe closes). Returns its exit code (negative: killed by that signal)."""
        for connection in (self._requests, self._replies):
            if connection is not None:
                connection.close()
        self._requests = self._replies = None
        process, self._process = self._process, None
        if process is None:
            return None
        if kill:
            process.kill()
        try:
            return process.wait(timeout=2)  # a child that just died, or exits on seeing its pipe closed
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def decode(self, data: bytes, size, max_pixels: int):
        """("ok", DecodedImage) or ("rejected", reason, detail), never raises for a bad file."""
        [(_, outcome)] = self.decode_stream([(None, data)], size, max_pixels)
        return outcome

    def decode_stream(self, items, size, max_pixels: int, in_flight: int = IN_FLIGHT):
        """Yields (tag, outcome) for each (tag, data) of `items`, in order, like `decode` for each.

        Up to `in_flight` files are sent ahead (and at most BYTES_IN_FLIGHT of file bytes beyond the first file),
        in one message per refill once half of them are answered, so the child decodes the next file while the
        caller handles this one's result (and reads the next file), and wakes for a message per several files. The
        child works through them in order, so the file at the head is the one it is on: its time limit runs from
        when the child got to it (the previous reply, or its sending), and a timeout or crash is that file's; the
        files behind it go to the new child.
        """
        size = tuple(size)
        if self._in_process is not None:
            for tag, data in items:
                yield tag, decode_outcome(self._in_process, data, size, max_pixels, self._then)
            return
        items = iter(items)
        sent = collections.deque()  # (tag, data) in the child's order
        resend = collections.deque()  # sent to a child that died or was killed before reaching them
        head_started = 0.0
        in_flight = max(1, in_flight)
        refill_below = in_flight - in_flight // 2  # refill, in one message, once half the files in flight are answered
        while True:
            batch = []
            if len(sent) < refill_below:
                in_bytes = sum(_payload(data) for _, data in sent)
                while len(sent) + len(batch) < in_flight:
                    item = resend.popleft() if resend else next(items, None)
                    if item is None:
                        break
                    if (sent or batch) and in_bytes + _payload(item[1]) > BYTES_IN_FLIGHT:
                        resend.appendleft(item)  # the next to send, once the bytes ahead of it are answered
                        break
                    batch.append(item)
                    in_bytes += _payload(item[1])
            if batch:
                if self._process is None or (not sent and self._process.poll() is not None):
                    self._stop()
                    self._start()
                try:
                    self._requests.send([(data, size, max_pixels) for _, data in batch])
                    failed = False
                except OSError:  # the child died: the head's reply (EOF) reports it, on the file it was on
                    failed = True
                if failed and sent:
                    resend.extendleft(reversed(batch))
                else:
                    if not sent:
                        head_started = time.monotonic()
                    sent.extend(batch)
            if not sent:
                return
            tag, _ = sent.popleft()
            outcome = self._reply(head_started)
            head_started = time.monotonic()
            if self._process is None:  # _reply stopped the child (a timeout, or it died): the next one gets the rest.
                resend.extendleft(reversed(sent))  # Not on a decoder_crash the child itself answered (a MemoryError
                sent.clear()  # under its limit): it is alive and will answer for these files in order.
            yield tag, outcome

    def _reply(self, head_started: float):
        """The head file's outcome: the child's reply within its time limit, else a timeout or crash rejection
        (the child is then stopped)."""
        try:
            if self._replies.poll(max(0.0, head_started + self.timeout - time.monotonic())):
                return self._replies.recv()
            crashed = False
        except (EOFError, OSError):  # the pipe closed under us: the child died
            crashed = True
        seconds = time.monotonic() - head_started
        exit_code = self._stop(kill=not crashed)
        self.restarts += 1
        if crashed:
            return ("rejected", DECODER_CRASH,
                    f"the decoder process died (exit code {exit_code}) after {seconds:.1f} s on this file")
        return ("rejected", DECODER_TIMEOUT,
                f"the decoder took more than {self.timeout:g} s (--decode_timeout_seconds); it was killed")

    def close(self) -> None:
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    # The module's own copy, not __main__'s: requests unpickle to beam_pipelines.isolation's classes (LocalFile).
    from beam_pipelines.isolation import serve as _serve

    _requests_fd, _replies_fd, _decode_fn, _then_fn, _limit = sys.argv[1:6]
    _serve(Connection(int(_requests_fd), writable=False), Connection(int(_replies_fd), readable=False), _decode_fn,
           _then_fn, int(_limit))
