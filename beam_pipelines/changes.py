"""A dataset that grows: the listing joined by path with what the current version knows, before anything is decoded.

For each listed file and each file the current dataset version recorded (a record's facts, or a rejection or
duplicate line), by path:
    unchanged record (same size and content version)   kept as it is: never read or decoded again
    unchanged rejection                                  its line is carried into the new version's rejected-*.jsonl
    unchanged duplicate                                  decoded again: the copy it duplicated may be gone
    changed, or new                                      decoded; a changed record's old copy is dropped
    gone                                                 its record is dropped from the new version
The files to decode are then batched again by the listing batch they came from, so a folder that grew by a few files
gives a few small batches and a new folder the usual ones. Everything here is keyed by path: small facts in the
runner's shuffle, never record bytes.
"""

import zlib

import apache_beam as beam

from beam_pipelines import grouping, listing, records, storage
from trainer import dataset_contract

CARRIED_FILES = 4  # rejected-carried-*.jsonl files: rejections of unchanged files, listed again in a new version


def values(kind: str):
    return beam.FlatMap(lambda item: [item[1]] if item[0] == kind else [])


def classify(path_and_joined):
    """(path, {"ref": [(FileRef, listing batch)], "known": [("record", Fact) | ("rejected", (size, version, reason,
    line))]}) -> ("decode", (ref, listing batch)) | ("kept", Fact) | ("carried", rejection line) | ("change", Change)
    | ("count", key). A file is unchanged when its size and content version are what the current version recorded."""
    _, joined = path_and_joined
    refs, known = list(joined["ref"]), list(joined["known"])
    ref, batch = refs[0] if refs else (None, None)
    kind, value = known[0] if known else (None, None)
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
            yield "decode", (ref, batch)
            yield "count", "rechecked_duplicates"
            return
        if unchanged:
            yield "carried", line  # still the file that was rejected: listed again, not read again
            yield "count", "unchanged_rejected"
            return
        if ref is None:
            yield "count", "removed_rejected"
    if ref is not None:
        yield "decode", (ref, batch)
        yield "count", "new" if kind is None else "changed"


def rebatch(batch_and_refs, files_per_batch: int):
    """The files to decode of one listing batch (a few when a folder grew a little, all when it is new)."""
    batch, refs = batch_and_refs
    refs = sorted(refs, key=lambda ref: ref.path)
    for sequence, start in enumerate(range(0, len(refs), files_per_batch)):
        yield listing.FileBatch(f"{batch}-n{sequence:03d}", tuple(refs[start:start + files_per_batch]), {})


def write_carried(key_and_lines, version_dir: str):
    key, lines = key_and_lines
    storage.write_bytes(storage.join(version_dir, dataset_contract.rejected_name(f"carried-{key:03d}")),
                        "".join(line + "\n" for line in sorted(lines)).encode("utf-8"))
    return {"counts": {}, "batches": [], "replaced": []}


class ClassifyChanges(beam.PTransform):
    """(listed FileBatches, what the current version knows: ("record", Fact) and ("rejected", ...) by path) ->
    {"batches": FileBatches to decode, "kept": Facts, "changes": drops of photos whose file is gone or changed,
    "tallies": counts}. Rejections of files that did not change are carried into the new version's folder."""

    def __init__(self, files_per_batch: int, version_dir: str):
        super().__init__()
        self._size, self._version_dir = files_per_batch, version_dir

    def expand(self, inputs):
        listed, known = inputs
        size = self._size
        classified = ({"ref": listed | "KeyRefsByPath" >> beam.FlatMap(
                           lambda batch: [(ref.path, (ref, batch.batch_id)) for ref in batch.files]),
                       "known": known}
                      | "JoinOnPath" >> beam.CoGroupByKey()
                      | "Classify" >> beam.FlatMap(classify))
        batches = (classified
                   | "ToDecode" >> values("decode")
                   | "KeyByListingBatch" >> beam.Map(lambda ref_and_batch: (ref_and_batch[1], ref_and_batch[0]))
                   | "GroupByListingBatch" >> beam.GroupByKey()
                   | "Rebatch" >> beam.FlatMap(rebatch, size))
        carried = (classified
                   | "Carried" >> values("carried")
                   | "KeyCarried" >> beam.Map(lambda line: (zlib.crc32(line.encode()) % CARRIED_FILES, line))
                   | "GroupCarried" >> beam.GroupByKey()
                   | "WriteCarried" >> beam.Map(write_carried, self._version_dir))
        tallies = ((listed | "ListingCounts" >> beam.Map(lambda batch: batch.counts),
                    classified | "ChangeCounts" >> values("count") | "CountKey" >> beam.Map(lambda key: {key: 1}))
                   | "FlattenCounts" >> beam.Flatten()
                   | "AsTallies" >> beam.Map(lambda counts: {"counts": counts, "batches": [], "replaced": []}))
        return {"batches": batches, "kept": classified | "Kept" >> values("kept"),
                "changes": classified | "Dropped" >> values("change"),
                "tallies": (tallies, carried) | "AllTallies" >> beam.Flatten()}


def read_known(item):
    """A facts file -> (path, ("record", Fact)) per record; a rejection file -> (path, ("rejected", ...)) per line."""
    path, batch = item
    if batch is None:
        return [(file, ("rejected", (size, version, reason, line))) for file, size, version, reason, line in
                records.read_rejections(path)]
    return [(fact.path, ("record", fact)) for fact in records.read_facts(path, batch, True)]
