"""Fault injection for the reliability tests: a stand-in decoder, and a launcher that SIGKILLs a job at a chosen point.

The stand-in decoder is named by CATSDOGS_TEST_DECODE_FN (isolation.FAULT_INJECTION_ENV), which only tests set:

    CATSDOGS_TEST_DECODE_FN=tests.reliability.faulty:decode python -m beam_pipelines.score ...

It runs where the job runs its decoder (the decoder's child process) and misbehaves on files that start with a marker.

The launcher runs a job's entry point with one function wrapped, so that the process SIGKILLs itself (no clean-up
at all, as when a pod is evicted or the OOM killer strikes) right before or after the n-th call whose arguments
contain a given text:

    python -m tests.reliability.faulty --kill_before trainer.storage:write_json:summary.json \\
        -- beam_pipelines.score --model ... --run_id r1

A test checks that the process died of SIGKILL: when the code no longer calls that function, the job finishes
normally and the test fails, instead of passing without having killed anything.
"""

import argparse
import functools
import importlib
import os
import signal
import sys
import time

import numpy as np

from beam_pipelines import imaging

HANG = b"HANG-THE-DECODER"
CRASH = b"CRASH-THE-DECODER"
ALLOCATE = b"ALLOCATE-HUGE"  # followed by a real picture
SLOW_ENV = "CATSDOGS_TEST_DECODE_SECONDS"  # every file then takes this long to decode: a job that runs for seconds
HUGE_ALLOCATION = 8 * 2**30  # far above the decoder child's address-space limit, below what the kernel grants


def decode(data: bytes, size, max_pixels: int):
    """imaging.decode_image, except that a file starting with HANG sleeps for an hour, one starting with CRASH kills
    its process with SIGABRT (a codec's infinite loop, a failed assertion in C), and one starting with ALLOCATE first
    asks for 8 GiB of memory, as a codec tricked by a hostile header would. The allocation is never touched, so it
    costs address space only: under the child's RLIMIT_AS it fails, without it the picture behind the marker is
    decoded as if nothing happened."""
    if data.startswith(HANG):
        time.sleep(3600)
    if data.startswith(CRASH):
        os.abort()
    if data.startswith(ALLOCATE):
        np.empty(HUGE_ALLOCATION, np.uint8)
        data = data[len(ALLOCATE):]
    delay = float(os.environ.get(SLOW_ENV) or 0)
    if delay:
        time.sleep(delay)
    return imaging.decode_image(data, size, max_pixels)


def _kill_point(spec: str, after: bool):
    """Wraps module:function so that the process SIGKILLs itself at its n-th call (default 1) whose arguments contain
    `text`. Spec: module:function[:text[:n]]."""
    module_name, function_name, text, nth = (spec.split(":", 3) + ["", "1"])[:4]
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        matches = any(text in str(value) for value in (*args, *kwargs.values()))
        if matches:
            calls[0] += 1
        die = matches and calls[0] == int(nth or 1)
        if die and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if die:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, function_name, wrapper)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.faulty")
    parser.add_argument("--kill_before", help="module:function[:text[:n]]: SIGKILL right before that call")
    parser.add_argument("--kill_after", help="module:function[:text[:n]]: SIGKILL right after that call returns")
    flags = parser.parse_args(argv[:split])
    entry, *job_args = argv[split + 1:]
    if flags.kill_before:
        _kill_point(flags.kill_before, after=False)
    if flags.kill_after:
        _kill_point(flags.kill_after, after=True)
    sys.argv = [entry, *job_args]
    importlib.import_module(entry).main()


if __name__ == "__main__":
    main()
