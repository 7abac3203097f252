"""Run the image decoder in a child process, so a file that hangs or crashes it costs that file, not the job.

Pillow and its C codecs (libjpeg-turbo, libpng, libwebp, Pillow's own GIF and BMP decoders) parse untrusted bytes.
A codec bug can loop forever or kill the process (a segfault, an abort); in-process, either would stall or fail a
Beam worker and, after the runner's retries, the whole job. `DecodeRunner` keeps one long-lived child process per
DoFn instance, sends it one file at a time over a pipe and waits at most `timeout` seconds for each answer. When the
time is up, or the child dies, the child is killed and replaced and the file is rejected as `decoder_timeout` /
`decoder_crash`; the next file goes to a new child.

The child is a fresh interpreter (`python -m beam_pipelines.isolation`), not a multiprocessing `spawn`/`fork`
child: Beam workers run threads, which `fork` does not copy safely, and `spawn` re-imports the launcher's
`__main__`, which breaks any launcher script without an `if __name__ == "__main__"` guard. It gets the parent's
`sys.path`, so whatever the parent can import (the decode function included) it can too.

Cost: one pipe round trip per file (the bytes in, the decoded pixels out), ~0.1 ms for a 180x180 result against
1-2 ms of decoding; a child start costs ~0.3 s of CPU (an interpreter importing numpy and Pillow) and ~40 MB of
memory per DoFn instance (one per Beam worker thread that decodes), paid again only after a failure.

The decode function is named by import path ("module:function", default `beam_pipelines.imaging:decode_image`)
because it has to be importable in the child; tests use it to inject a decoder that hangs or aborts. An optional
second function (`then_fn`) runs on the decoded image in the child too, so that only its (smaller) result crosses the
pipe: preprocessing sends back the record's JPEG bytes and hashes instead of the pixels (`imaging.record_parts`),
which cut the pipe's cost ~7x and moved the encoding off the Beam worker (measured with py-spy).
"""

import importlib
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from beam_pipelines import imaging

DECODER_TIMEOUT = "decoder_timeout"
DECODER_CRASH = "decoder_crash"
REASONS = (DECODER_TIMEOUT, DECODER_CRASH)
DEFAULT_DECODE_FN = "beam_pipelines.imaging:decode_image"
_STARTUP_SECONDS = 120
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


def decode_outcome(decode, data: bytes, size, max_pixels: int, then=None):
    """("ok", DecodedImage or then(DecodedImage)) or ("rejected", reason, detail): plain tuples, since ImageRejected
    does not pickle."""
    try:
        decoded = decode(data, size, max_pixels)
        return ("ok", then(decoded) if then is not None else decoded)
    except imaging.ImageRejected as rejected:
        return ("rejected", rejected.reason, rejected.detail)
    except Exception as error:  # noqa: BLE001 - one poisoned file must not fail the job
        return ("rejected", imaging.DECODE_ERROR, f"unexpected {type(error).__name__}: {error}")


def serve(requests: Connection, replies: Connection, decode_fn: str, then_fn: str = "") -> None:
    """The child's loop: (data, size, max_pixels) in, an outcome out, until the parent closes its end."""
    decode = load_function(decode_fn)
    then = load_function(then_fn) if then_fn else None
    replies.send(_READY)
    while True:
        try:
            data, size, max_pixels = requests.recv()
        except EOFError:
            return
        replies.send(decode_outcome(decode, data, size, max_pixels, then))


class DecodeRunner:
    """decode(data, size, max_pixels) in a reused child process, with a per-file timeout in seconds.

    `timeout=0` decodes in this process (no isolation, no IPC): for debugging and for callers that already run
    each file in its own process. `then_fn` ("module:function", optional) is applied to each decoded image in the
    same place, and its result is what `decode` returns.
    """

    def __init__(self, timeout: float, decode_fn: str = DEFAULT_DECODE_FN, then_fn: str | None = None):
        self.timeout = timeout
        self.decode_fn = decode_fn
        self.then_fn = then_fn or ""
        self.restarts = 0
        self._process = None
        self._requests = self._replies = None
        self._in_process = load_function(decode_fn) if not timeout else None
        self._then = load_function(then_fn) if then_fn else None

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path or os.getcwd() for path in sys.path))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "beam_pipelines.isolation", str(request_read), str(reply_write),
                 self.decode_fn, self.then_fn],
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
        if self._in_process is not None:
            return decode_outcome(self._in_process, data, size, max_pixels, self._then)
        if self._process is None or self._process.poll() is not None:
            self._stop()
            self._start()
        started = time.monotonic()
        try:
            self._requests.send((data, tuple(size), max_pixels))
            if self._replies.poll(self.timeout):
                return self._replies.recv()
            crashed = False
        except (EOFError, OSError):  # the pipe closed under us: the child died
            crashed = True
        seconds = time.monotonic() - started
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
    _requests_fd, _replies_fd, _decode_fn, _then_fn = sys.argv[1:5]
    serve(Connection(int(_requests_fd), writable=False), Connection(int(_replies_fd), readable=False), _decode_fn,
          _then_fn)
