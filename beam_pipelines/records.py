"""Preprocessing's per-batch work: a batch of files becomes shards written by the worker that decoded them, and the
few shards whose records the grouping changed are rewritten.

`DecodeAndWriteFn` (one FileBatch -> that batch's files in the version folder, facts for the grouping):
    label from the path -> read ahead -> decode, resize, JPEG-encode and hash in the isolated children
    -> each record into the shard of its content id's split (grouping.split_for_group: where a photo with no copy
       stays) -> <split>-<batch>.tfrecord, facts-<batch>.jsonl (one line per record), rejected-<batch>.jsonl, and the
       facts' hash bands spilled to _work/bands-<batch>.spill for the grouping (spill.py)
The record bytes go from the decoder child to a file; they never cross a shuffle or a side input, and neither does a
photo's fact: the runner sees (spill partition, file) pairs.

`RewriteBatchFn` ((batch, [Change]) -> the batch's shards and facts written again into the version folder, with
duplicates dropped, records moved to their group's split, rejections listed): only batches holding a change, which
are few (copies and near-copies are about 0.3% of pets-180).
"""

import json
import logging
import os
import posixpath
import re
import time
from collections import Counter

import apache_beam as beam

from beam_pipelines import file_listing, grouping, isolation, reading, tfrecords
from trainer import dataset_contract, features, storage

NAMESPACE = "catsdogs.preprocess"
NO_LABEL = "no_label"
REMOVED = "removed"
WORK_DIR = "_work"  # in the version folder while the run goes: spill files; removed before publishing


def work_dir(version_dir: str) -> str:
    return storage.join(version_dir, WORK_DIR)
_RECORD_PARTS_FN = "beam_pipelines.imaging:record_parts"

_LOG = logging.getLogger(__name__)


def label_for_path(path: str, roots, class_names, label_from: str) -> int | None:
    """The label index of a file, or None. folder: the nearest folder naming a class, from the file's parent up
    to its input root (inclusive); prefix: the file name's first word (`cat.12.jpg`, `Dog_3.png`)."""
    folder, name = posixpath.split(path)
    if label_from == "prefix":
        word = re.split(r"[._\-\s]", name, maxsplit=1)[0]
        return features.label_for_name(word, class_names) if word else None
    root = max((r for r in roots if path.startswith(r + "/")), key=len, default=None)
    stop = posixpath.dirname(root) if root else ""
    while folder and folder != stop and len(folder) > len(stop):
        folder, part = posixpath.split(folder)
        label = features.label_for_name(part, class_names) if part else None
        if label is not None:
            return label
        if not part:
            break
    return None


def fact_line(fact: grouping.Fact) -> str:
    """A facts-<batch>.jsonl line. JSON escapes a non-UTF-8 local name's surrogates, so the path round-trips."""
    return json.dumps({"content_id": fact.content_id, "phash": fact.phash, "path": fact.path, "label": fact.label,
                       "split": fact.split, "index": fact.index, "size": fact.size, "version": fact.version})


def read_facts(path: str, batch: str, fixed: bool) -> list[grouping.Fact]:
    facts = []
    for line in storage.read_bytes(path).decode("utf-8").splitlines():
        row = json.loads(line)
        facts.append(grouping.Fact(row["content_id"], row["phash"], row["path"], row["label"], batch, row["split"],
                                   row["index"], fixed, row["size"], row["version"]))
    return facts


def write_batch(version_dir: str, batch: str, shards: dict, facts: list[grouping.Fact], class_names) -> dict:
    """Writes a batch's shards (records by split) and facts; returns its entry for metadata.json."""
    entry = {"batch": batch, "facts": dataset_contract.facts_name(batch), "shards": {}}
    for split in features.SPLITS:
        if not shards.get(split):
            continue
        name = dataset_contract.shard_name(split, batch)
        storage.write_bytes(storage.join(version_dir, name), tfrecords.encode(shards[split]))
        classes = Counter(class_names[fact.label] for fact in facts if fact.split == split)
        entry["shards"][split] = {"path": name, "records": len(shards[split]), "classes": dict(sorted(classes.items()))}
    storage.write_bytes(storage.join(version_dir, entry["facts"]),
                        "".join(fact_line(fact) + "\n" for fact in facts).encode("utf-8"))
    return entry


def rejection_line(ref, reason: str, detail: str) -> str:
    """A rejected-*.jsonl line: `path` as valid UTF-8 for people; `file` (the path exactly, JSON-escaped when not valid
    UTF-8), `size` and `version` for the next version's run, which does not read an unchanged rejected file again."""
    return json.dumps({"path": storage.display_path(ref.path), "reason": reason, "detail": detail,
                       "file": ref.path, "size": ref.size, "version": ref.version}, sort_keys=True)


def read_rejections(path: str) -> list[tuple[str, int, int, str, str]]:
    """(file path, size, version, reason, line) of each line of an earlier version's rejected-*.jsonl."""
    rows = []
    for line in storage.read_bytes(path).decode("utf-8").splitlines():
        row = json.loads(line)
        rows.append((row.get("file", row["path"]), row.get("size", -1), row.get("version", -1), row["reason"], line))
    return rows


class DecodeAndWriteFn(beam.DoFn):
    """FileBatch -> ("tally", {...}) once, then ("fact", Fact) per record written (see the module docstring)."""

    def __init__(self, config, roots, version_dir: str):
        self._config = config
        self._roots = tuple(roots)
        self._version_dir = version_dir

    def setup(self):
        config = self._config
        # One decoder child per core: decoding, encoding and hashing are most of the work, and this process only
        # moves bytes between the children and the shard files.
        self._decoding = reading.Decoding(os.cpu_count() or 1, config.decode_timeout_seconds, _RECORD_PARTS_FN,
                                          isolation.memory_limit(config.max_pixels, config.max_file_bytes))
        self._done = self._logged = 0
        self._last = time.monotonic()

    def teardown(self):
        self._decoding.close()

    def process(self, batch):
        config, names = self._config, self._config.class_names
        counts, rejected, labels, refs = Counter(batch.counts), [], {}, []
        for ref in batch.files:
            label = label_for_path(ref.path, self._roots, names, config.label_from)
            if label is None and not ref.problem:
                where = "file-name prefix" if config.label_from == "prefix" else "folder names"
                rejected.append(rejection_line(ref, NO_LABEL, f"no class ({', '.join(names)}) in the {where}"))
                counts["rejected/" + NO_LABEL] += 1
                continue
            labels[ref.path] = label
            refs.append(ref)
        shards, facts = {split: [] for split in features.SPLITS}, []
        for ref, outcome in self._decoding.decoded(refs, size=config.size, max_pixels=config.max_pixels,
                                                   max_bytes=config.max_file_bytes):
            if outcome[0] == "rejected":
                _, reason, detail = outcome
                if reason in isolation.REASONS:
                    _LOG.warning("preprocess: %s: %s: %s", storage.display_path(ref.path), reason, detail)
                rejected.append(rejection_line(ref, reason, detail))
                counts["rejected/" + reason] += 1
                continue
            parts, label = outcome[1], labels[ref.path]
            split = grouping.split_for_group(parts.content_id, config.split_ratios)
            shards[split].append(features.make_example(
                image_jpeg=parts.jpeg, height=config.image_size, width=config.image_size, label=label,
                class_name=names[label], image_id=parts.content_id, source=storage.display_path(ref.path)))
            facts.append(grouping.Fact(parts.content_id, parts.perceptual_hash, ref.path, label, batch.batch_id,
                                       split, len(shards[split]) - 1, False, ref.size, ref.version))
        entry = write_batch(self._version_dir, batch.batch_id, shards, facts, names) if facts else None
        if rejected:
            storage.write_bytes(storage.join(self._version_dir, dataset_contract.rejected_name(batch.batch_id)),
                                "".join(line + "\n" for line in rejected).encode("utf-8"))
        counts["read"] += len(batch)
        for key, value in counts.items():
            beam.metrics.Metrics.counter(NAMESPACE, key.replace("/", "_")).inc(value)
        self._log_progress(len(batch))
        yield "tally", {"counts": dict(counts), "batches": [entry] if entry else [], "replaced": []}
        if facts:  # the grouping reads them from disk, a partition at a time: no element per photo
            spilled = storage.join(work_dir(self._version_dir), f"bands-{batch.batch_id}.spill")
            for pair in grouping.spill_bands(spilled, facts, config.near_duplicate_bits):
                yield "bands", pair

    def _log_progress(self, files: int) -> None:
        self._done += files
        now = time.monotonic()
        if now - self._last >= 30.0:
            _LOG.info("preprocess worker pid %d: %d files done, %.1f files/s over the last %.0f s", os.getpid(),
                      self._done, (self._done - self._logged) / (now - self._last), now - self._last)
            self._logged, self._last = self._done, now


class RewriteBatchFn(beam.DoFn):
    """(batch, [Change]) -> ("tally", {...}): the batch's shards and facts written again into the version folder.

    `homes` maps an earlier version's batch to the folder holding its files (new batches are in the version folder):
    an earlier version's files are never modified, the rewritten copy is this version's."""

    def __init__(self, version_dir: str, class_names, homes: dict):
        self._version_dir = version_dir
        self._class_names = tuple(class_names)
        self._homes = dict(homes)

    def process(self, batch_and_changes):
        batch, changes = batch_and_changes
        home = self._homes.get(batch, self._version_dir)
        facts = read_facts(storage.join(home, dataset_contract.facts_name(batch)), batch, batch in self._homes)
        records = {}
        for split in {fact.split for fact in facts}:
            shard = tfrecords.decode(storage.read_bytes(storage.join(home, dataset_contract.shard_name(split, batch))))
            records.update({(split, index): record for index, record in enumerate(shard)})
        actions = {(change.fact.split, change.fact.index): change for change in changes}
        counts, rejected, duplicates = Counter(), [], []
        shards, kept = {split: [] for split in features.SPLITS}, []
        for fact in facts:
            change = actions.get((fact.split, fact.index))
            record = records[(fact.split, fact.index)]
            split = fact.split
            ref = file_listing.FileRef(fact.path, fact.size, 0.0, fact.version)
            if change is not None and change.action == "drop":
                if change.reason == "duplicate":
                    counts["duplicate"] += 1
                    duplicates.append(rejection_line(ref, "duplicate", f"the same pixels as {fact.content_id}, which "
                                                                       f"is kept once, from another file"))
                else:
                    counts[REMOVED] += 1
                continue
            if change is not None and change.action == "reject":
                counts["rejected/" + change.reason] += 1
                rejected.append(rejection_line(ref, change.reason, "a near-copy of photos in different splits of an "
                                               "earlier version: in no split, so that no split leaks into another"))
                continue
            if change is not None and change.action == "move":
                split = change.split
                counts["moved"] += 1
            shards[split].append(record)
            kept.append(fact._replace(split=split, index=len(shards[split]) - 1, fixed=False))
        entry = write_batch(self._version_dir, batch, shards, kept, self._class_names) if kept else None
        if home == self._version_dir:  # this run's files no entry names any more
            gone = {dataset_contract.shard_name(split, batch) for split in {fact.split for fact in facts}}
            gone -= {shard["path"] for shard in (entry or {"shards": {}})["shards"].values()}
            if entry is None:
                gone.add(dataset_contract.facts_name(batch))
            for name in gone:
                storage.delete(storage.join(self._version_dir, name))
        for name, lines in ((dataset_contract.rejected_name(f"{batch}-groups"), rejected),
                            (dataset_contract.duplicates_name(batch), duplicates)):
            if lines:
                storage.write_bytes(storage.join(self._version_dir, name),
                                    "".join(line + "\n" for line in lines).encode("utf-8"))
        yield "tally", {"counts": dict(counts), "batches": [], "replaced": [{"batch": batch, "entry": entry}]}


def entry_from(previous_version: str, entry: dict) -> dict:
    """An earlier version's batch entry (paths relative to that version's folder), its paths made relative to a new
    version folder beside it."""
    def move(path: str) -> str:
        return posixpath.normpath(posixpath.join("..", previous_version, path))

    shards = {split: {**shard, "path": move(shard["path"])} for split, shard in entry["shards"].items()}
    return {**entry, "facts": move(entry["facts"]), "shards": shards}


def metadata_batches(previous_batches, tallied, replaced) -> list[dict]:
    """The new version's batch list: earlier batches not rewritten, this run's batches, rewritten ones replaced
    (or gone when nothing of them was kept)."""
    replacements = {item["batch"]: item["entry"] for item in replaced}
    batches = [entry for entry in previous_batches if entry["batch"] not in replacements]
    batches += [entry for entry in tallied if entry["batch"] not in replacements]
    batches += [entry for entry in replacements.values() if entry is not None]
    return sorted(batches, key=lambda entry: entry["batch"])
