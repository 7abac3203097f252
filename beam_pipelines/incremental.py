"""What earlier scoring runs already accounted for, kept small, so a run over a growing folder pays for what is new.

One object per output directory and model version, `<output_dir>/_incremental/model-<version>.json`, rewritten by
each successful run under a compare-and-swap (GCS generation precondition; an exclusive lock locally):

    watermark   seconds since the epoch, W
    recent      keys (path, size, content version) of files with FileRef.mtime >= W that were accounted for
    retry       paths that failed for a reason that may go away (read errors, decoder timeouts), as
                storage.display_path shows them (valid UTF-8 even for local names that are not)
    class_shares of the run that wrote it (for the drift warning)

Its claim: every file that appeared before W was listed, and scored or dead-lettered, by the run that wrote it or by
an earlier one. A later run skips a file when (mtime < W and it is not to be retried) or its key is in `recent`, and
writes W' = (its own first listing start) - margin: the margin covers clock skew between the launcher and the file
system or GCS. Only files that appeared in the margin window before a run (normally a few minutes of arrivals) need
`recent` entries, so the object stays small however long the history is: a year of hourly runs (8,760) reads one
object at start, and the runs in between are never read again. Files that change content get a new key
(FileRef.version: the modification time locally, the generation on GCS) and are scored again.

Besides: `path_hash` for resuming a killed run (the files its committed batches already hold), `pack`/`unpack` for
sorted uint64 key arrays stored as base64 text.
"""

import base64
import dataclasses
import hashlib
import json
import logging

import numpy as np

from beam_pipelines import file_listing, isolation, listing, reading
from trainer import storage

STATE_DIR = "_incremental"
SKIPPED = "skipped"  # count key: accounted for by an earlier run
DONE_BEFORE = "done_before"  # count key: committed by an earlier attempt of this run id (a resume)
TRANSIENT_REASONS = (reading.READ_ERROR, isolation.DECODER_TIMEOUT)  # retried by the next run; others are final
DEFAULT_MARGIN_MINUTES = 15.0

_LOG = logging.getLogger(__name__)


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def path_hash(path: str) -> int:
    return hash64(storage.path_key(path))


def record_key(ref: file_listing.FileRef) -> int:
    """Identity of a file's content at its path: path, size and content version (see file_listing.FileRef)."""
    return hash64(storage.path_key(ref.path) + f"\0{ref.size}\0{ref.version}".encode())


def pack(keys) -> str:
    return base64.b64encode(np.unique(np.asarray(list(keys), dtype=np.uint64)).tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint64) if text else np.zeros(0, np.uint64)


def contains(sorted_keys: np.ndarray, key: int) -> bool:
    if not len(sorted_keys):
        return False
    index = int(np.searchsorted(sorted_keys, np.uint64(key)))
    return index < len(sorted_keys) and int(sorted_keys[index]) == key


def state_path(output_dir: str, model_version: str) -> str:
    return storage.join(output_dir, STATE_DIR, f"model-{model_version}.json")


@dataclasses.dataclass(frozen=True)
class State:
    watermark: float
    recent: str  # pack()ed keys
    retry: tuple[str, ...]
    run_id: str
    class_shares: dict
    source: str  # where it was read from

    def to_json(self) -> dict:
        return {"watermark": self.watermark, "recent": self.recent, "retry": list(self.retry), "run_id": self.run_id,
                "class_shares": self.class_shares, "recent_entries": len(unpack(self.recent))}


def load(output_dirs, model_version: str) -> list[State]:
    """The states of the given output directories for this model version (those that have one)."""
    states = []
    for output_dir in output_dirs:
        path = state_path(output_dir, model_version)
        content, _ = storage.read_versioned(path)
        if content is None:
            _LOG.info("no earlier run of model version %s in %s: every file there is new", model_version, output_dir)
            continue
        record = json.loads(content)
        states.append(State(float(record["watermark"]), record.get("recent", ""), tuple(record.get("retry", ())),
                            record.get("run_id", ""), record.get("class_shares", {}), path))
    return states


class SkipAccounted(listing.Selector):
    """The listing's filter for --skip_scored and for resumed runs (see the module docstring for the rule)."""

    def __init__(self, states, new_watermark: float, resume_keys_path: str | None = None):
        self._states = list(states)
        self._new_watermark = new_watermark
        self._resume_keys_path = resume_keys_path

    def open(self) -> None:
        self._recent = [unpack(state.recent) for state in self._states]
        self._retry = [frozenset(state.retry) for state in self._states]
        self._done = (np.frombuffer(storage.read_bytes(self._resume_keys_path), dtype=np.uint64)
                      if self._resume_keys_path else np.zeros(0, np.uint64))
        self._kept_recent = []

    def __call__(self, ref: file_listing.FileRef) -> str | None:
        if len(self._done) and contains(self._done, path_hash(ref.path)):
            return DONE_BEFORE
        key = None
        for state, recent, retry in zip(self._states, self._recent, self._retry, strict=True):
            if retry and storage.display_path(ref.path) in retry:
                continue
            if ref.mtime < state.watermark:
                return SKIPPED
            key = record_key(ref) if key is None else key
            if contains(recent, key):
                if ref.mtime >= self._new_watermark:
                    self._kept_recent.append(key)  # still inside the next run's window: carry it forward
                return SKIPPED
        return None

    def notes(self) -> dict:
        kept, self._kept_recent = self._kept_recent, []
        return {"recent": kept} if kept else {}


def save(output_dir: str, model_version: str, state: dict) -> bool:
    """Writes the new state unless a state with a later watermark is already there (a run that started later and
    finished first). Returns whether it was written."""
    path = state_path(output_dir, model_version)
    data = storage.to_json_bytes(state)
    for _ in range(10):
        content, generation = storage.read_versioned(path)
        if content is not None and float(json.loads(content)["watermark"]) > state["watermark"]:
            _LOG.info("kept the incremental state in %s: a later run already moved its watermark further", path)
            return False
        if storage.write_if_generation(path, data, generation):
            return True
    raise RuntimeError(f"could not update {path}: it kept changing")
