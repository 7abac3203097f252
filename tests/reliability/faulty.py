"""Fault injection for the reliability tests: a decoder that hangs or aborts, a reader whose reads fail once.

They are named by import path on the command line (`--decode_fn tests.reliability.faulty:decode`,
`--read_fn tests.reliability.faulty:read_flaky`), so they run wherever the job runs them: in the decoder's
child process, in Beam worker processes. Nothing here is used unless a flag names it.
"""

import hashlib
import os
import time
from pathlib import Path

from beam_pipelines import imaging, storage

HANG = b"HANG-THE-DECODER"
CRASH = b"CRASH-THE-DECODER"
MARKER_DIR_ENV = "CATSDOGS_FAULTY_MARKER_DIR"  # where the readers note which files already failed once
FLAKY = "flaky"  # read_flaky fails the bundle of files whose name contains this, once


def decode(data: bytes, size, max_pixels: int):
    """imaging.decode_image, except that a file starting with HANG sleeps for an hour and one starting with CRASH
    kills its process with SIGABRT, as a codec bug would (an infinite loop, a failed assertion in C)."""
    if data.startswith(HANG):
        time.sleep(3600)
    if data.startswith(CRASH):
        os.abort()
    return imaging.decode_image(data, size, max_pixels)


def _first_time(path: str, what: str) -> bool:
    """True the first time any process asks about (path, what): an O_EXCL marker file in $CATSDOGS_FAULTY_MARKER_DIR,
    so the answer survives bundle retries and crosses worker processes."""
    digest = hashlib.sha256(f"{what}:{path}".encode()).hexdigest()[:16]
    try:
        (Path(os.environ[MARKER_DIR_ENV]) / f"{what}-{digest}").open("x").close()
    except FileExistsError:
        return False
    return True


class InjectedWorkerFailure(RuntimeError):
    """Not an OSError, so the job's own read retries don't catch it: it fails the whole bundle, as a lost worker
    or an out-of-memory kill would, and only the runner can retry it."""


def read_flaky(path: str) -> bytes:
    """storage.read_bytes behind two injected faults. Every file's first read raises ConnectionResetError (a
    transient I/O error). For files whose name contains FLAKY the next read then fails the whole bundle. Every read
    that gets through is logged to reads.log in the marker directory, so a test can see which files were read twice."""
    if _first_time(path, "io"):
        raise ConnectionResetError(f"injected transient error reading {path}")
    if FLAKY in Path(path).name and _first_time(path, "bundle"):
        raise InjectedWorkerFailure(f"injected worker failure reading {path}")
    data = storage.read_bytes(path)
    with open(Path(os.environ[MARKER_DIR_ENV]) / "reads.log", "a", encoding="utf-8") as log:
        log.write(path + "\n")
    return data
