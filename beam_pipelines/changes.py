"""A dataset that grows: the listing joined by path with what the current version knows, before anything is decoded.

For each listed file and each file the current dataset version recorded (a record's facts, or a rejection or
duplicate line), by path:
    unchanged record (same size and content version)   kept as it is: never read or decoded again
    unchanged rejection                                  its line is carried into the new version's rejected-*.jsonl
    unchanged duplicate                                  decoded again: the copy it duplicated may be gone
    changed, or new                                      decoded; a changed record's old copy is dropped
    gone                                                 its record is dropped from the new version
The join runs on disk (spill.py): the listing's batches and the current version's files are spilled by a hash of the
path, and each partition is joined in one step, holding about 1/PARTITIONS of the paths; the files to decode come out
as new batches, the kept photos' facts go straight into the grouping's band spills. No path is a runner element.
"""

import zlib
from collections import Counter, defaultdict

import apache_beam as beam

from beam_pipelines import grouping, listing, records, spill
from trainer import dataset_contract, storage


def values(kind: str):
    return beam.FlatMap(lambda item: [item[1]] if item[0] == kind else [])


def _path_key(entry) -> bytes:
    return storage.path_key(entry[0])


def classify(listed, known):
    """One path's (FileRef, listing batch) or None and what the current version knows of it or None ->
    ("decode", ref) | ("kept", Fact) | ("carried", rejection line) | ("change", Change) | ("count", key)."""
    ref = listed[0] if listed else None
    kind, value = known if known else (None, None)
    if kind == "record":
        if ref is not None and (ref.size, ref.version) == (value.size, value.version):
            yield "kept", value
            yield "count", "unchanged"
            return
        yield "change", grouping.Change(value.batch, value, "drop", reason=records.REMOVED)
    elif kind == "rejected":
        size, version, reason, line = value
        unchanged = ref is not None and (ref.size, ref.version) == (size, version)
        if unchanged and reason == "duplicate":  # decoded again: its kept copy may have gone since
            yield "decode", ref
            yield "count", "rechecked_duplicates"
            return
        if unchanged:
            yield "carried", line  # still the file that was rejected: listed again, not read again
            yield "count", "unchanged_rejected"
            return
        if ref is None:
            yield "count", "removed_rejected"
    if ref is not None:
        yield "decode", ref
        yield "count", "new" if kind is None else "changed"


def known_entries(path: str, batch: str | None) -> list:
    """A facts file -> (path, ("record", Fact)) per record; a rejection or duplicates file -> (path, ("rejected",
    (size, version, reason, line))) per line."""
    if batch is None:
        return [(file, ("rejected", (size, version, reason, line)))
                for file, size, version, reason, line in records.read_rejections(path)]
    return [(fact.path, ("record", fact)) for fact in records.read_facts(path, batch, True)]


class SpillListingFn(beam.DoFn):
    """FileBatch -> ("tally", listing counts), then ("paths", (partition, spill file)) for the join."""

    def __init__(self, version_dir: str):
        self._work = records.work_dir(version_dir)

    def process(self, batch):
        yield "tally", {"counts": dict(batch.counts), "batches": [], "replaced": []}
        entries = [(ref.path, ("ref", (ref, batch.batch_id))) for ref in batch.files]
        path = storage.join(self._work, f"paths-{batch.batch_id}.spill")
        for pair in spill.spill(path, entries, _path_key):
            yield "paths", pair


class SpillKnownFn(beam.DoFn):
    """(a current version's facts or rejection file, its batch or None) -> ("paths", (partition, spill file))."""

    def __init__(self, version_dir: str):
        self._work = records.work_dir(version_dir)

    def process(self, item):
        file, batch = item
        path = storage.join(self._work, f"known-{zlib.crc32(file.encode()):08x}.spill")
        for pair in spill.spill(path, known_entries(file, batch), _path_key):
            yield "paths", pair


class JoinPartitionFn(beam.DoFn):
    """(partition, spill files) -> ("batch", FileBatch to decode), ("bands", (partition, spill file)) of the kept
    photos, ("change", Change) for photos gone or changed, ("tally", counts); carried rejections are written here."""

    def __init__(self, version_dir: str, files_per_batch: int, bits: int, batch_prefix: str):
        self._version_dir = version_dir
        self._size, self._bits, self._prefix = files_per_batch, bits, batch_prefix

    def process(self, partition_and_paths):
        partition, paths = partition_and_paths
        listed, known = {}, {}
        for path, (kind, value) in spill.read_all(sorted(set(paths)), partition):
            if kind == "ref":
                listed[path] = value
            else:
                known[path] = (kind, value)
        decode, kept, carried, counts = defaultdict(list), [], [], Counter()
        for path in listed.keys() | known.keys():
            for kind, value in classify(listed.get(path), known.get(path)):
                if kind == "decode":
                    decode[listed[path][1]].append(value)
                elif kind == "kept":
                    kept.append(value)
                elif kind == "carried":
                    carried.append(value)
                elif kind == "count":
                    counts[value] += 1
                else:
                    yield kind, value
        if carried:
            name = dataset_contract.rejected_name(f"carried-{self._prefix}-p{partition:03d}")
            storage.write_bytes(storage.join(self._version_dir, name),
                                "".join(line + "\n" for line in sorted(carried)).encode("utf-8"))
        if kept:
            path = storage.join(records.work_dir(self._version_dir), f"bands-kept-{partition:03d}.spill")
            for pair in grouping.spill_bands(path, kept, self._bits):
                yield "bands", pair
        refs = sorted((ref for batch_refs in decode.values() for ref in batch_refs), key=lambda ref: ref.path)
        for sequence, start in enumerate(range(0, len(refs), self._size)):
            yield "batch", listing.FileBatch.of(f"{self._prefix}-j{partition:03d}-{sequence:05d}",
                                                refs[start:start + self._size], {})
        yield "tally", {"counts": dict(counts), "batches": [], "replaced": []}


class ClassifyChanges(beam.PTransform):
    """(listed FileBatches, the current version's facts and rejection files as (path, batch or None)) ->
    {"batches": FileBatches to decode, "bands": the kept photos' band spills, "changes": drops of photos whose file is
    gone or changed, "tallies": counts}."""

    def __init__(self, version_dir: str, files_per_batch: int, bits: int, batch_prefix: str):
        super().__init__()
        self._version_dir, self._join = version_dir, JoinPartitionFn(version_dir, files_per_batch, bits, batch_prefix)

    def expand(self, inputs):
        listed, known_files = inputs
        listed_spills = listed | "SpillListing" >> beam.ParDo(SpillListingFn(self._version_dir))
        known_spills = known_files | "SpillCurrentVersion" >> beam.ParDo(SpillKnownFn(self._version_dir))
        joined = ((listed_spills | "ListingSpills" >> values("paths"),
                   known_spills | "KnownSpills" >> values("paths"))
                  | "AllPathSpills" >> beam.Flatten()
                  | "GroupPathSpills" >> beam.GroupByKey()
                  | "JoinOnPath" >> beam.ParDo(self._join))
        tallies = ((listed_spills | "ListingTallies" >> values("tally"), joined | "JoinTallies" >> values("tally"))
                   | "ChangeTallies" >> beam.Flatten())
        return {"batches": joined | "ToDecode" >> values("batch"), "bands": joined | "KeptBands" >> values("bands"),
                "changes": joined | "Dropped" >> values("change"), "tallies": tallies}
