"""ListImages: folders and globs (local or gs://) -> batches of files spread over the workers. Both jobs start here.

A batch of files (`FileBatch`), not a file, is the unit that crosses the runner from here on: each element costs the
runner fixed overhead (a Reshuffle is several steps per element), so it is paid once per batch. The listing
streams (file_listing.list_files: a page or a directory entry at a time) and a batch is emitted as soon as it is full,
so nothing holds the list of every file; what the Reshuffle carries is paths and sizes, never image bytes.

A file matched by two --input patterns is listed once (by the first). An optional `select` (see `Selector`) decides
per file whether it needs work at all, inside the same step: scoring's incremental filter skips what earlier runs
scored without any shuffle or join.
"""

import dataclasses
import logging
import pickle
import zlib

import apache_beam as beam

from beam_pipelines import file_listing
from trainer import storage

DEFAULT_FILES_PER_BATCH = 1024
LISTED = "listed"
LISTING_REPORT = "_listed-"  # <report_dir>/_listed-NNN.json: files to process of pattern NNN, once listed


def files_to_process(report_dir: str, patterns: int) -> int | None:
    """The files the listing found to process, once every pattern's report is written (else None)."""
    total, reports = 0, 0
    for ref in file_listing.list_files(storage.join(report_dir, LISTING_REPORT + "*.json")):
        total += storage.read_json(ref.path)["files"]
        reports += 1
    return total if reports == patterns else None

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FileBatch:
    """Files to process, and what the listing counted while collecting them (`counts`: `listed`, plus the keys a
    Selector returned for files that need no work). `notes` carries a Selector's per-batch extras. len() is the
    number of files, which is what RunInference reports as elements.

    The files travel compressed (`packed`): the DirectRunner's Reshuffle keeps every batch it spreads as a Python
    object until the next stage reads it, and a batch of 1,024 FileRefs unpacked is ~300 KB, packed ~20 KB.
    """

    batch_id: str
    packed: bytes
    count: int
    counts: dict
    notes: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, batch_id: str, files, counts: dict, notes: dict | None = None) -> "FileBatch":
        files = tuple(files)
        packed = zlib.compress(pickle.dumps(files, protocol=pickle.HIGHEST_PROTOCOL), 1)
        return cls(batch_id, packed, len(files), dict(counts), notes or {})

    @property
    def files(self) -> tuple[file_listing.FileRef, ...]:
        return pickle.loads(zlib.decompress(self.packed))

    def __len__(self) -> int:
        return self.count


class Selector:
    """Decides, during the listing, which files need work. `open()` runs once per worker before the first file
    (load state there, not in __init__: selectors are pickled into the pipeline). `__call__(ref)` returns None for a
    file to process, else the count key it is tallied under (e.g. "skipped"). `notes()` returns extras to attach to
    the next batch (and resets them)."""

    def open(self) -> None:
        pass

    def __call__(self, ref: file_listing.FileRef) -> str | None:
        return None

    def notes(self) -> dict:
        return {}


class ListBatchesFn(beam.DoFn):
    """(pattern index, pattern) -> FileBatch elements of up to `files_per_batch` files each."""

    def __init__(self, patterns, files_per_batch: int, batch_prefix: str, select: Selector | None = None,
                 report_dir: str | None = None):
        self._patterns = [storage.absolute(p) for p in patterns]
        self._size = files_per_batch
        self._prefix = batch_prefix
        self._select = select or Selector()
        self._report_dir = report_dir

    def setup(self):
        self._select.open()
        self._earlier = [file_listing.Matcher(pattern) for pattern in self._patterns]

    def process(self, element):
        index, pattern = element
        earlier = self._earlier[:index]
        counts, files, sequence, queued = {LISTED: 0}, [], 0, 0
        for ref in file_listing.list_files(pattern):
            if any(matches(ref.path) for matches in earlier):
                continue  # an earlier pattern lists it
            counts[LISTED] += 1
            verdict = self._select(ref)
            if verdict is not None:
                counts[verdict] = counts.get(verdict, 0) + 1
                continue
            files.append(ref)
            queued += 1
            if len(files) == self._size:
                yield self._batch(index, sequence, files, counts)
                counts, files, sequence = {LISTED: 0}, [], sequence + 1
        if files or any(counts.values()) or sequence == 0:
            yield self._batch(index, sequence, files, counts)
        _LOG.info("listing %s: done, %d files to process", storage.display_path(pattern), queued)
        if self._report_dir:  # the launcher's progress reads how many files there are to process
            storage.write_json(storage.join(self._report_dir, f"{LISTING_REPORT}{index:03d}.json"), {"files": queued})

    def _batch(self, index: int, sequence: int, files, counts) -> FileBatch:
        return FileBatch.of(f"{self._prefix}-{index:03d}-{sequence:07d}", files, counts, self._select.notes())


class ListImages(beam.PTransform):
    """Patterns -> FileBatch, reshuffled so the batches spread over the workers."""

    def __init__(self, patterns, files_per_batch: int = DEFAULT_FILES_PER_BATCH, batch_prefix: str = "b",
                 select: Selector | None = None, report_dir: str | None = None):
        super().__init__()
        self._patterns = list(patterns)
        self._fn = ListBatchesFn(self._patterns, files_per_batch, batch_prefix, select, report_dir)

    def expand(self, pipeline):
        return (pipeline
                | "Patterns" >> beam.Create(list(enumerate(self._patterns)))
                | "ListBatches" >> beam.ParDo(self._fn)
                | "SpreadBatches" >> beam.Reshuffle())
