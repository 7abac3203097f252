"""The lifecycle both Beam jobs share: lease, staging, run and wait, publish, clean up what dead runs left.

A job (preprocess.run, score.run) goes through these steps, each a function here:

    with Lease(path):                         # one run per output at a time; a dead holder's lease is taken over
        clean_stale_staging(parent, prefix)   # staging of runs that died long ago
        ... write into a staging location ...
        result = run_pipeline(pipeline, progress)   # run, log progress every 30 s, wait, close runner connections
        ... verify the counts, then publish (publish_directory, or move a pointer) and write the summary last

Locally a publish is a rename (readers see the old complete output or the new one); on GCS, which has no rename,
the completion marker (summary.json, metadata.json, a `latest` pointer) is what readers must wait for, and it is
written last.
"""

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter

import apache_beam as beam

from beam_pipelines import cli, dask_compat, storage

LEASE_TTL_SECONDS = 180.0  # a lease not renewed for this long belongs to a dead run and is taken over
PROGRESS_SECONDS = 30.0
STALE_STAGING_HOURS = 72.0
ATTEMPT_FILE = "_attempt.json"  # in each staging location: when and by whom it was started
EXIT_LEASE_HELD = 75  # EX_TEMPFAIL: another run holds the output; try again later

_LOG = logging.getLogger(__name__)


class LeaseHeld(cli.JobExit):
    """Another live run holds the lease: exit code EXIT_LEASE_HELD, with a message naming the holder."""

    code_number = EXIT_LEASE_HELD


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(content: bytes | None) -> dict | None:
    """A lease record; {} for one that cannot be read (it has no renewal time, so it counts as dead)."""
    if content is None:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return {}


class Lease:
    """An exclusive claim on one output (a scoring run id, a dataset), held in a small object next to it.

    Acquired by creating the object only if it does not exist (`if_generation_match=0` on GCS, an exclusive lock
    locally); renewed every ttl/4 seconds by a background thread, under the generation it last read. The record
    names its owner (a random id per Lease), which is how a run recognises its own write when GCS made it but the
    reply was lost (the client's retry then meets it: HTTP 412), instead of refusing itself. Another run
    finding a live lease refuses to start (LeaseHeld). A lease whose holder stopped renewing it for `ttl` seconds, or
    whose process is gone from this very host, belongs to a dead run: it is taken over, and the takeover is logged.
    `lost` is set when a renewal finds that somebody else took the lease: the job must then not publish.
    """

    def __init__(self, path: str, ttl: float = LEASE_TTL_SECONDS, what: str = "this output"):
        self.path = path
        self.ttl = ttl
        self.what = what
        self.owner = uuid.uuid4().hex
        self.lost = threading.Event()
        self.took_over = None  # the dead holder's record, when this lease was taken over
        self._stop = threading.Event()
        self._thread = None

    def _record(self, acquired_at: float) -> bytes:
        return storage.to_json_bytes({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                                      "acquired_at": _iso(acquired_at), "renewed_at": _now(), "ttl": self.ttl})

    def _is_dead(self, holder: dict) -> str | None:
        """Why the holder is dead, or None when it may be alive."""
        age = _now() - float(holder.get("renewed_at", 0))
        if age > float(holder.get("ttl", self.ttl)):
            return f"not renewed for {age:.0f} s"
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
            return f"its process {holder.get('pid')} on this host is gone"
        return None

    def acquire(self) -> "Lease":
        started = _now()
        dead = None  # (record, why) of the dead holder this run replaces
        for _ in range(10):
            content, generation = storage.read_versioned(self.path)
            holder = _parse(content)
            if holder is None:
                dead = None
            elif holder.get("owner") == self.owner:
                break  # our own write: GCS made it but its reply was lost, and the client's retry met it (412)
            else:
                why = self._is_dead(holder)
                if why is None:
                    raise LeaseHeld(
                        f"error: another run holds {self.what} (lease {self.path}: host {holder.get('host')}, pid "
                        f"{holder.get('pid')}, since {holder.get('acquired_at')}). Wait for it to finish, or use "
                        f"another run id / output. A lease not renewed for {self.ttl:.0f} s is taken over.")
                dead = (holder, why)
            if storage.write_if_generation(self.path, self._record(started), generation):
                break
        else:
            raise LeaseHeld(f"error: could not take the lease {self.path}: it kept changing; another run is starting")
        if dead is not None:
            self.took_over = dead[0]
            _LOG.warning("took over the lease on %s from a dead run (host %s, pid %s: %s)", self.what,
                         dead[0].get("host"), dead[0].get("pid"), dead[1])
        self._acquired_at = started
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            content, generation = storage.read_versioned(self.path)
            if (_parse(content) or {}).get("owner") != self.owner:
                _LOG.error("the lease on %s was taken by another run: this run will not publish", self.what)
                self.lost.set()
                return
            storage.write_if_generation(self.path, self._record(self._acquired_at), generation)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost.is_set():
            content, generation = storage.read_versioned(self.path)
            if (_parse(content) or {}).get("owner") == self.owner:
                storage.delete_if_generation(self.path, generation)

    def __enter__(self) -> "Lease":
        self.acquire()
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.release()


def write_attempt(staging: str, **fields) -> dict:
    """Records in the staging location when this attempt started (read by clean_stale_staging and by resumes)."""
    record = {"started_at": _iso(_now()), "started_at_epoch": _now(), "host": socket.gethostname(),
              "pid": os.getpid(), **fields}
    storage.write_json(storage.join(staging, ATTEMPT_FILE), record)
    return record


def read_attempt(staging: str) -> dict | None:
    path = storage.join(staging, ATTEMPT_FILE)
    try:
        return storage.read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def clean_stale_staging(parent: str, prefix: str, keep: str | None = None,
                        max_age_hours: float = STALE_STAGING_HOURS) -> list[str]:
    """Removes staging locations `<parent>/<prefix>*` whose attempt started more than max_age_hours ago (left by runs
    that died and were never resumed); younger ones may belong to a run still going and are only reported. `keep`
    (this run's own) is never touched. Returns the removed ones."""
    removed = []
    stagings = set()
    for ref in storage.list_files(storage.join(parent, prefix + "*/" + ATTEMPT_FILE)):
        stagings.add(ref.path[: -len(ATTEMPT_FILE) - 1])
    for staging in sorted(stagings):
        if keep and staging.rstrip("/") == keep.rstrip("/"):
            continue
        attempt = read_attempt(staging) or {}
        age_hours = (_now() - float(attempt.get("started_at_epoch", _now()))) / 3600
        if age_hours > max_age_hours:
            storage.delete_tree(staging)
            _LOG.warning("removed %s, left %.0f hours ago by a run that did not finish", staging, age_hours)
            removed.append(staging)
        else:
            _LOG.info("%s was left by a run that did not finish, or belongs to one still going (started %s); it is "
                      "removed after %g hours", staging, attempt.get("started_at"), max_age_hours)
    return removed


class MergeTalliesFn(beam.CombineFn):
    """Per-batch tallies -> one: {"counts": {key: n}, other keys: lists}. The counts are summed and the lists
    concatenated: how both jobs count without pushing every file through extra steps, on every runner (the DaskRunner
    has no metrics)."""

    def create_accumulator(self):
        return {"counts": Counter()}

    def add_input(self, total, tally):
        for key, value in tally.items():
            if key == "counts":
                total["counts"].update(value)
            else:
                total.setdefault(key, []).extend(value)
        return total

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for total in accumulators:
            self.add_input(merged, total)
        return merged

    def extract_output(self, total):
        return {**total, "counts": dict(total["counts"])}


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a job has done so far, as the launcher sees it (from files its workers committed, so on any runner)."""

    done: int
    total: int | None  # None until the listing has finished
    unit: str  # "files", "batches"


def _bar(progress: Progress, seconds: float, width: int = 30) -> str:
    rate = progress.done / seconds if seconds > 0 else 0.0
    if not progress.total:
        return f"{progress.done:,} {progress.unit} done, {rate:,.0f}/s, {seconds:,.0f} s"
    share = min(1.0, progress.done / progress.total)
    left = (progress.total - progress.done) / rate if rate > 0 else None
    eta = f", about {left:,.0f} s left" if left is not None else ""
    return (f"[{'#' * round(share * width):<{width}}] {share:4.0%} {progress.done:,}/{progress.total:,} "
            f"{progress.unit}, {rate:,.0f}/s{eta}")


def run_pipeline(pipeline, progress=None):
    """Runs the pipeline and waits for it. `progress()`, when given, returns a Progress: on a terminal it is drawn as
    a bar updated every second, otherwise logged every PROGRESS_SECONDS (for runners whose workers log elsewhere)."""
    stop = threading.Event()
    started = time.monotonic()
    terminal = sys.stderr.isatty()

    def show():
        try:
            line = _bar(progress(), time.monotonic() - started) if progress else "still running"
        except Exception as error:  # noqa: BLE001 - progress is informational; never let it stop the run
            line = f"(progress unavailable: {type(error).__name__}: {error})"
        if terminal:
            sys.stderr.write("\r" + line[:150].ljust(150))
            sys.stderr.flush()
        else:
            _LOG.info("progress: %s", line)

    def beat():
        while not stop.wait(1.0 if terminal else PROGRESS_SECONDS):
            show()

    thread = threading.Thread(target=beat, name="progress", daemon=True)
    thread.start()
    try:
        result = pipeline.run()
        try:
            result.wait_until_finish()
        finally:
            dask_compat.close(result)
    finally:
        stop.set()
        thread.join()
        if terminal:  # the bar's last state stays on screen, however short the run
            if progress:
                show()
            sys.stderr.write("\n")
    return result


def publish_directory(staging: str, final: str, marker: str | None = None, exclude=()) -> None:
    """Makes a fully written staging location the final one, replacing what was there.

    Locally two renames (the old folder moved aside, then deleted): readers see the old complete set or the new one.
    On GCS the old final's marker is deleted first (so a half-replaced folder never carries a completion marker), then
    the old objects, then the new ones are copied server-side (in parallel) and the staging removed; the caller writes
    the marker last. `exclude`: prefixes of the relative paths (files or folders) of staging not to publish.
    """
    exclude = tuple(exclude)
    if not storage.is_remote(final):
        final = final.rstrip("/")
        for name in os.listdir(staging):
            if name.startswith(exclude):
                path = os.path.join(staging, name)
                storage.delete_tree(path) if os.path.isdir(path) else storage.delete(path)
        aside = f"{final}.old"  # one name, not one per process: a publish killed before removing it leaves it to
        storage.delete_tree(aside)  # the next publish, instead of a stale copy of the old set for ever
        if os.path.exists(final):
            os.rename(final, aside)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        os.rename(staging.rstrip("/"), final)
        storage.delete_tree(aside)
        return
    if marker:
        storage.delete(storage.join(final, marker))
    storage.delete_tree(final)
    source = staging.rstrip("/") + "/"
    moves = [(ref.path, final.rstrip("/") + "/" + ref.path[len(source):]) for ref in storage.list_files(source)
             if not ref.path[len(source):].startswith(exclude)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda move: storage.copy(*move), moves))
    storage.delete_tree(staging)
