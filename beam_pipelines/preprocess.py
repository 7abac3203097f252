"""Image folders -> validated, deduplicated, split TFRecords: the dataset the trainer reads.

Stages (one Beam step each, see `build`):
  ListFiles          stream every file under the --input folders/globs (local or gs://) over the workers
  DecodeImages       read bytes, label from the folder (or file-name prefix), decode and resize with
                     imaging.decode_image, re-encode as JPEG, hash the pixels (exact) and the picture (dHash)
  GroupExactCopies   exact copies (same decoded pixels) are written once: the copy with the smallest path
  LinkNearCopies     perceptual hashes within --near_duplicate_bits are linked (5 hash bands, pigeonhole) and
                     joined into groups by --link_rounds rounds of min-label propagation
  AssignSplits       a group's split comes from a hash of its label: copies never straddle splits, and the
                     same input gives the same split on every run and every runner
  WriteExamples[*]   train/validation/test TFRecord shards, rejected-*.jsonl, then metadata.json (written last)
Only small keys go through GroupByKey; the JPEG bytes cross one materialisation and the sink's shuffle.

Command (all 23k photos of ../shared/data/pets-180, as `make preprocess` and the benchmark run it):
  python -m beam_pipelines.preprocess --input ../shared/data/pets-180 --output_dir /tmp/pets180-data \\
      --runner DirectRunner --direct_num_workers 2

Cost: 20-26 s for the 22,991 photos (880-1,240 images/s, 2.2 GB RAM) on the shared 2-core machine, about 1.6 ms of
CPU per 180x180 photo, of which 0.5 ms is decoding and encoding; --direct_running_mode multi_processing is slower
here (31 s: its gRPC data plane). docs/PREPROCESS.md and benchmarks/RESULTS.md have the measurements, and the
Dataflow and Dask commands.
"""

import calendar
import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import posixpath
import re
import sys
import time
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipelines import imaging, isolation, storage
from beam_pipelines.options import PreprocessOptions
from trainer import features, provenance

NAMESPACE = "catsdogs.preprocess"
NO_LABEL = "no_label"
READ_ERROR = "read_error"
TARGET_SHARD_BYTES = 150 * 1024 * 1024
# Bytes per stored record, per pixel: a quality-95 JPEG of a photo is about 0.4 bytes per pixel (measured on
# pets-180: ~13 KB at 180x180), plus the Example's other fields. Only used to choose the shard count.
_BYTES_PER_PIXEL = 0.45
_RECORD_OVERHEAD = 300
_COUNTS_FILE = "_counts.json"  # written by the pipeline's last step into the staging directory, then removed
_PROGRESS_SECONDS = 30.0
_RECORD_PARTS_FN = "beam_pipelines.imaging:record_parts"
_READ_ATTEMPTS = 3  # a transient I/O error is retried twice (0.2 s, then 0.4 s later) before the file is rejected
_READ_BACKOFF_SECONDS = 0.2
# Errors that will not go away on a retry: the file vanished, is a folder, or is not ours to read.
_PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# Leftovers of runs that died before cleaning up (SIGKILL, OOM, a lost VM) next to --output_dir: staging
# directories (`<output_dir>.staging-<UTC launch time>-<id>`) older than this are removed, newer ones only reported:
# they may belong to a run still going, and a run over millions of files on few workers can take most of a day.
_STALE_STAGING_HOURS = 72.0
_DATASET_FILE = re.compile(r"^((train|validation|test)-\d{5}-of-\d{5}\.tfrecord|rejected-\d{5}-of-\d{5}\.jsonl|"
                           r"metadata\.json|_counts\.json)$")

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The validated settings of one run. `recorded()` is what metadata.json keeps as `options`."""

    inputs: tuple[str, ...]
    output_dir: str
    class_names: tuple[str, ...] = features.DEFAULT_CLASS_NAMES
    label_from: str = "folder"
    image_size: int = features.DEFAULT_IMAGE_SIZE
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    near_duplicate_bits: int = 4
    link_rounds: int = 4
    num_shards: int = 0  # per split; 0 = from the estimated data size
    # Protections (not recorded in metadata options: they change what happens to bad input, not the dataset).
    max_rejected_fraction: float = 0.5  # more rejected files than this fails the job
    decode_timeout_seconds: float = 30.0  # per file, in a child process; 0 = decode in the worker process
    decode_fn: str = isolation.DEFAULT_DECODE_FN  # "module:function"; other values are for fault-injection tests
    read_fn: str | None = None  # "module:function" replacing storage.read_bytes; for fault-injection tests

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("no --input given: pass a folder, glob or gs:// prefix of images, e.g. "
                             "--input ../shared/data/pets-180 (repeat --input for several)")
        if not self.output_dir:
            raise ValueError("no --output_dir given: pass the dataset directory to write, e.g. --output_dir /tmp/data")
        features.validate_class_names(self.class_names)
        if self.label_from not in ("folder", "prefix"):
            raise ValueError(f"--label_from must be folder or prefix (got {self.label_from!r})")
        if not 8 <= self.image_size <= 4096:
            raise ValueError(f"--image_size must be between 8 and 4096 pixels (got {self.image_size})")
        if self.max_pixels < self.image_size ** 2:
            raise ValueError(f"--max_pixels {self.max_pixels} is below one {self.image_size}x{self.image_size} image")
        ratios = self.split_ratios
        if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f"--split_ratios must be three non-negative numbers (train,validation,test) summing "
                             f"to 1, e.g. 0.8,0.1,0.1 (got {','.join(map(str, ratios))})")
        if not 0 <= self.near_duplicate_bits <= 8:
            raise ValueError(f"--near_duplicate_bits must be between 0 and 8 (got {self.near_duplicate_bits}); "
                             f"unrelated photos are about 32 bits apart")
        if not 2 <= self.link_rounds <= 20:
            raise ValueError(f"--link_rounds must be between 2 and 20 (got {self.link_rounds})")
        if self.num_shards < 0:
            raise ValueError(f"--num_shards must be 0 (automatic) or positive (got {self.num_shards})")
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError(f"--max_rejected_fraction must be between 0 and 1 (0.5 means half the files; "
                             f"got {self.max_rejected_fraction})")
        if not 0.0 <= self.decode_timeout_seconds <= 3600:
            raise ValueError(f"--decode_timeout_seconds must be between 0 (decode in the worker process) and 3600 "
                             f"(got {self.decode_timeout_seconds})")
        isolation.load_function(self.decode_fn)  # fail at launch, not on a worker
        if self.read_fn:
            isolation.load_function(self.read_fn)

    @property
    def size(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def recorded(self) -> dict:
        return {
            "class_names": list(self.class_names), "label_from": self.label_from, "image_size": self.image_size,
            "max_pixels": self.max_pixels, "split_ratios": list(self.split_ratios),
            "near_duplicate_bits": self.near_duplicate_bits, "link_rounds": self.link_rounds,
            "num_shards": self.num_shards,
        }


# --- pure per-element functions ---------------------------------------------------------------


def input_root(pattern: str) -> str:
    """The folder a pattern is read from: labels are looked for in folders from a file up to this one."""
    if not storage.is_gcs(pattern):
        pattern = _absolute(pattern)
    wildcard = re.search(r"[*?\[]", pattern)
    if wildcard:
        prefix = pattern[:wildcard.start()]
        return prefix.rstrip("/") if prefix.endswith("/") else posixpath.dirname(prefix)
    if not pattern.endswith("/") and storage.exists(pattern) and not (
            not storage.is_gcs(pattern) and _isdir(pattern)):
        return posixpath.dirname(pattern)  # a single file
    return pattern.rstrip("/")


def _absolute(path: str) -> str:
    import os
    return os.path.abspath(path) + ("/" if path.endswith("/") else "")


def _isdir(path: str) -> bool:
    import os
    return os.path.isdir(path)


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


def split_for_group(group: str, ratios) -> str:
    """Deterministic split of a near-duplicate group from a hash of its label (not Python's salted hash())."""
    position = int.from_bytes(hashlib.sha256(group.encode("ascii")).digest()[:8], "big") / 2.0 ** 64
    cumulative = 0.0
    for split, ratio in zip(features.SPLITS, ratios, strict=True):
        cumulative += ratio
        if position < cumulative and ratio > 0:
            return split
    return next(s for s, r in zip(reversed(features.SPLITS), reversed(ratios), strict=True) if r > 0)


def hash_bands(phash: int, bits: int) -> list[tuple[int, int]]:
    """(band index, band value) for the bits+1 bands of a 64-bit hash. Two hashes at most `bits` apart
    agree on at least one band (pigeonhole), so comparing within bands finds every such pair."""
    count = bits + 1
    edges = [round(i * 64 / count) for i in range(count + 1)]
    return [(i, (phash >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


def link_bucket(band_and_members, bits: int):
    """Yields (a, b) and (b, a) for every pair in one hash band within `bits` Hamming bits.

    A pair agreeing on several bands is emitted only from the first of them, so no Distinct is needed.
    """
    (band, _), members = band_and_members
    unique = sorted(dict(members).items())  # exact copies share a content id: one entry each
    if len(unique) < 2:
        return
    ids = [content_id for content_id, _ in unique]
    hashes = np.array([phash for _, phash in unique], dtype=np.uint64)
    for i in range(len(unique) - 1):
        distances = np.bitwise_count(hashes[i + 1:] ^ hashes[i])
        for offset in np.flatnonzero(distances <= bits):
            j = i + 1 + int(offset)
            if any(a == b for (k, a), (_, b) in zip(hash_bands(unique[i][1], bits), hash_bands(unique[j][1], bits),
                                                     strict=True) if k < band):
                continue
            yield ids[i], ids[j]
            yield ids[j], ids[i]


def propagate(node_and_joined):
    """One round of min-label propagation: a node sends its label to itself and every neighbour."""
    node, joined = node_and_joined
    label = min(joined["label"])
    yield node, label
    for neighbours in joined["neighbours"]:
        for neighbour in neighbours:
            yield neighbour, label


def settle(node_and_labels):
    """(node, (smallest label heard, whether every label heard agreed))."""
    node, labels = node_and_labels
    labels = list(labels)
    smallest = min(labels)
    return node, (smallest, all(label == smallest for label in labels))


# --- DoFns ---------------------------------------------------------------------------------------


class DecodeImageFn(beam.DoFn):
    """[(path, size)] -> per file ("ok", content_id, path, class_name, phash, example) or ("rejected", path,
    reason, detail).

    One output per file (DaskRunner mixes tagged outputs, so the kinds are told apart downstream). Logs
    progress every 30 s from the worker, since runner metrics are not available on every runner.
    """

    def __init__(self, config: PreprocessConfig, roots, progress_seconds: float = _PROGRESS_SECONDS):
        self._config = config
        self._roots = tuple(roots)
        self._progress_seconds = progress_seconds

    def setup(self):
        self._read = beam.metrics.Metrics.counter(NAMESPACE, "read")
        self._decoded = beam.metrics.Metrics.counter(NAMESPACE, "decoded")
        self._rejected = {}
        self._started = self._last_log = time.monotonic()
        self._done = self._done_at_last_log = 0
        self._read_bytes = isolation.load_function(self._config.read_fn) if self._config.read_fn \
            else storage.read_bytes
        # The child also encodes and hashes (imaging.record_parts): only the record's bytes come back.
        self._decoder = isolation.DecodeRunner(self._config.decode_timeout_seconds, self._config.decode_fn,
                                               then_fn=_RECORD_PARTS_FN)

    def teardown(self):
        self._decoder.close()

    def _read_with_retries(self, path: str) -> bytes:
        for attempt in range(_READ_ATTEMPTS):
            try:
                return self._read_bytes(path)
            except _PERMANENT_READ_ERRORS:
                raise
            except OSError as error:
                if attempt + 1 == _READ_ATTEMPTS:
                    raise
                _LOG.info("preprocess: retrying %s after %s: %s", path, type(error).__name__, error)
                time.sleep(_READ_BACKOFF_SECONDS * 2 ** attempt)
        raise AssertionError("unreachable")

    def _reject(self, path, reason, detail):
        if reason not in self._rejected:
            self._rejected[reason] = beam.metrics.Metrics.counter(NAMESPACE, f"rejected_{reason}")
        self._rejected[reason].inc()
        return "rejected", path, reason, detail

    def _log_progress(self):
        self._done += 1
        now = time.monotonic()
        if now - self._last_log >= self._progress_seconds:
            rate = (self._done - self._done_at_last_log) / (now - self._last_log)
            _LOG.info("preprocess: %d files done by this worker, %.1f files/s over the last %.0f s",
                      self._done, rate, now - self._last_log)
            self._last_log, self._done_at_last_log = now, self._done

    def process(self, batch):
        """A batch of (path, size) from ListFiles: the files stream through the decoder process, several in flight,
        so that it decodes the next file while this worker reads files and builds records."""
        config = self._config
        early = []  # rejected before decoding; yielded as they come

        def readable():
            for path, _ in batch:
                self._read.inc()
                self._log_progress()
                label = label_for_path(path, self._roots, config.class_names, config.label_from)
                if label is None:
                    where = "file-name prefix" if config.label_from == "prefix" else "folder names"
                    early.append(self._reject(path, NO_LABEL, f"no class ({', '.join(config.class_names)}) in the "
                                                              f"{where}"))
                    continue
                try:
                    data = self._read_with_retries(path)
                except OSError as error:
                    early.append(self._reject(path, READ_ERROR, f"{type(error).__name__}: {error}"))
                    continue
                yield (path, label), data

        for (path, label), outcome in self._decoder.decode_stream(readable(), config.size, config.max_pixels):
            yield from early
            early.clear()
            yield self._output(path, label, outcome)
        yield from early

    def _output(self, path, label, outcome):
        config = self._config
        if outcome[0] == "rejected":
            _, reason, detail = outcome
            if reason in isolation.REASONS:
                _LOG.warning("preprocess: %s: %s: %s", path, reason, detail)
            return self._reject(path, reason, detail)
        parts = outcome[1]
        class_name = config.class_names[label]
        example = features.make_example(
            image_jpeg=parts.jpeg, height=config.image_size, width=config.image_size,
            label=label, class_name=class_name, image_id=parts.content_id, source=path)
        self._decoded.inc()
        return "ok", parts.content_id, path, class_name, parts.perceptual_hash, example


class AssignSplitFn(beam.DoFn):
    """Decoded image -> (split, class_name, example), or ("duplicate", class_name, None) for a dropped copy."""

    def __init__(self, ratios):
        self._ratios = tuple(ratios)

    def setup(self):
        self._written = {split: beam.metrics.Metrics.counter(NAMESPACE, f"written_{split}")
                         for split in features.SPLITS}
        self._duplicates = beam.metrics.Metrics.counter(NAMESPACE, "duplicate")

    def process(self, image, keepers, groups):
        _, content_id, path, class_name, _, example = image
        keeper = keepers.get(content_id)
        if keeper is not None and keeper != path:
            self._duplicates.inc()
            yield "duplicate", class_name, None
            return
        split = split_for_group(groups.get(content_id, content_id), self._ratios)
        self._written[split].inc()
        yield split, class_name, example


class CountOutcomesFn(beam.CombineFn):
    """Outcome keys ("read", "rejected/truncated", "written/train/cat", ...) -> {key: count}."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, counts, key):
        counts[key] += 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts):
        return dict(counts)


def _kept_copy(content_id_and_paths):
    """Exact copies: the smallest path is the one written. Yields (content_id, that path) only for copies."""
    content_id, paths_and_hashes = content_id_and_paths
    paths = [path for path, _ in paths_and_hashes]
    if len(paths) > 1:
        yield content_id, min(paths)


def _first_hash(content_id_and_paths) -> int:
    return next(iter(content_id_and_paths[1]))[1]


def _outcome_keys(decoded):
    if decoded[0] == "ok":
        return ["read"]
    return ["read", f"rejected/{decoded[2]}"]


def _rejection_line(decoded) -> str:
    _, path, reason, detail = decoded
    return json.dumps({"path": path, "reason": reason, "detail": detail}, ensure_ascii=False, sort_keys=True)


# --- the pipeline --------------------------------------------------------------------------------


def build(pipeline, config: PreprocessConfig, write_dir: str, num_shards: dict) -> dict:
    """Adds the preprocessing steps to `pipeline`, writing into `write_dir` (the staging directory).

    Returns the PCollections of written file names per output and the outcome counts; the last step writes
    the counts to `write_dir/_counts.json`, and depends on every write, so runners that compute only the
    final step's ancestors (DaskRunner) still run everything.
    """
    roots = [input_root(pattern) for pattern in config.inputs]
    decoded = (
        pipeline
        | "ListFiles" >> storage.ListFiles(config.inputs, counter_namespace=NAMESPACE, batched=True)
        | "DecodeImages" >> beam.ParDo(DecodeImageFn(config, roots, _PROGRESS_SECONDS))
    )
    images = decoded | "KeepDecoded" >> beam.Filter(lambda d: d[0] == "ok")
    rejected = decoded | "KeepRejected" >> beam.Filter(lambda d: d[0] == "rejected")

    # Small keys only from here to AssignSplits: (content id, path, perceptual hash).
    copies = (
        images
        | "KeyByContent" >> beam.Map(lambda d: (d[1], (d[2], d[4])))
        | "GroupExactCopies" >> beam.GroupByKey()
    )
    keepers = copies | "PickKeptCopy" >> beam.FlatMap(_kept_copy)
    bits = config.near_duplicate_bits
    neighbours = (
        copies
        | "BandHashes" >> beam.FlatMap(
            lambda c: [(band, (c[0], _first_hash(c))) for band in hash_bands(_first_hash(c), bits)])
        | "GroupByHashBand" >> beam.GroupByKey()
        | "LinkNearCopies" >> beam.FlatMap(link_bucket, bits)
        | "CollectNeighbours" >> beam.GroupByKey()
    )
    labels = neighbours | "StartLabels" >> beam.Map(lambda n: (n[0], (min([n[0], *n[1]]), True)))
    for round_index in range(1, config.link_rounds):
        labels = (
            {"label": labels | f"DropFlag[{round_index}]" >> beam.Map(lambda n: (n[0], n[1][0])),
             "neighbours": neighbours}
            | f"JoinLabels[{round_index}]" >> beam.CoGroupByKey()
            | f"SendLabels[{round_index}]" >> beam.FlatMap(propagate)
            | f"GatherLabels[{round_index}]" >> beam.GroupByKey()
            | f"TakeSmallestLabel[{round_index}]" >> beam.Map(settle)
        )
    groups = labels | "GroupLabels" >> beam.Map(lambda n: (n[0], n[1][0]))

    assigned = images | "AssignSplits" >> beam.ParDo(
        AssignSplitFn(config.split_ratios), keepers=beam.pvalue.AsDict(keepers), groups=beam.pvalue.AsDict(groups))

    written_files = []
    for split in features.SPLITS:
        examples = assigned | f"Select[{split}]" >> beam.FlatMap(
            lambda a, split=split: [a[2]] if a[0] == split else [])
        written_files.append(examples | f"WriteExamples[{split}]" >> beam.io.WriteToTFRecord(
            storage.join(write_dir, features.shard_prefix(split)), file_name_suffix=features.SHARD_SUFFIX,
            num_shards=num_shards[split], shard_name_template="-SSSSS-of-NNNNN"))
    written_files.append(
        rejected
        | "FormatRejections" >> beam.Map(_rejection_line)
        | "WriteRejections" >> beam.io.WriteToText(
            storage.join(write_dir, "rejected"), file_name_suffix=".jsonl", num_shards=1,
            shard_name_template="-SSSSS-of-NNNNN"))

    outcomes = (
        decoded | "ReadOutcomes" >> beam.FlatMap(_outcome_keys),
        assigned | "WriteOutcomes" >> beam.Map(
            lambda a: "duplicate" if a[0] == "duplicate" else f"written/{a[0]}/{a[1]}"),
        neighbours | "LinkOutcomes" >> beam.Map(lambda n: "near_duplicate/linked"),
        labels | "ConvergenceOutcomes" >> beam.FlatMap(lambda n: [] if n[1][1] else ["near_duplicate/unconverged"]),
        *(files | f"FileOutcomes[{i}]" >> beam.Map(lambda f: "file/" + posixpath.basename(f))
          for i, files in enumerate(written_files)),
    )
    counts = (
        outcomes
        | "MergeOutcomes" >> beam.Flatten()
        | "CountOutcomes" >> beam.CombineGlobally(CountOutcomesFn())
    )
    counts | "WriteCounts" >> beam.Map(lambda c: storage.write_json(storage.join(write_dir, _COUNTS_FILE), c))
    return {"files": written_files, "counts": counts}


# --- launcher --------------------------------------------------------------------------------


def config_from_options(options: PipelineOptions) -> PreprocessConfig:
    opts = options.view_as(PreprocessOptions)
    try:
        ratios = tuple(float(r) for r in opts.split_ratios.split(","))
    except ValueError:
        raise ValueError(f"--split_ratios must be three numbers like 0.8,0.1,0.1 (got {opts.split_ratios!r})") from None
    inputs = tuple(p if storage.is_gcs(p) else _absolute(p) for p in (opts.input or ()))
    return PreprocessConfig(
        inputs=inputs, output_dir=opts.output_dir or "",
        class_names=tuple(n.strip() for n in opts.class_names.split(",") if n.strip()),
        label_from=opts.label_from, image_size=opts.image_size, max_pixels=opts.max_pixels, split_ratios=ratios,
        near_duplicate_bits=opts.near_duplicate_bits, link_rounds=opts.link_rounds, num_shards=opts.num_shards,
        max_rejected_fraction=opts.max_rejected_fraction, decode_timeout_seconds=opts.decode_timeout_seconds,
        decode_fn=opts.decode_fn, read_fn=opts.read_fn)


def plan_shards(config: PreprocessConfig) -> dict:
    """Shards per split: --num_shards, or the estimated output size over ~150 MB (a streaming count of the
    inputs; nothing holds the list)."""
    if config.num_shards:
        return {split: config.num_shards for split in features.SPLITS}
    files = sum(1 for pattern in config.inputs for _ in storage.iter_files(pattern))
    total = files * (config.image_size ** 2 * _BYTES_PER_PIXEL + _RECORD_OVERHEAD)
    return {split: max(1, math.ceil(total * ratio / TARGET_SHARD_BYTES))
            for split, ratio in zip(features.SPLITS, config.split_ratios, strict=True)}


def _existing_metadata(output_dir: str):
    path = storage.join(output_dir, features.METADATA_FILE)
    if not storage.exists(path):
        return None
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        return {}


def _check_output_dir(config: PreprocessConfig, overwrite: bool, skip_if_current: bool):
    """Returns the existing metadata when the dataset is current and --skip_if_current; raises SystemExit when
    the directory must not be replaced; returns None to go ahead."""
    output_dir = config.output_dir
    metadata = _existing_metadata(output_dir)
    if metadata is not None and skip_if_current and metadata.get("inputs") == list(config.inputs) \
            and metadata.get("options") == config.recorded():
        return metadata
    existing = [entry.path for entry in itertools.islice(storage.iter_files(output_dir.rstrip("/") + "/"), 1000)]
    if not existing:
        return None
    if not overwrite:
        what = "a dataset" if metadata is not None else f"{len(existing)} file(s)"
        changed = " made from other inputs or options" if skip_if_current and metadata is not None else ""
        raise SystemExit(f"error: {output_dir} already holds {what}{changed}; pass --overwrite to replace it, "
                         f"or choose another --output_dir")
    foreign = [p for p in existing if not _DATASET_FILE.match(posixpath.basename(p))]
    if foreign:
        raise SystemExit(f"error: refusing to replace {output_dir}: it holds files that are not part of a dataset "
                         f"(e.g. {foreign[0]}); remove them or choose another --output_dir")
    return None


def _staging_dir(output_dir: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{output_dir.rstrip('/')}.staging-{stamp}-{uuid.uuid4().hex[:6]}"


def _leftover_staging_dirs(output_dir: str) -> list[str]:
    """Staging directories next to output_dir (`<output_dir>.staging-<time>-<id>`), from this run's siblings."""
    base = output_dir.rstrip("/")
    if storage.is_gcs(base):  # a prefix listing: only objects whose names start with "<output_dir>.staging-"
        found = {base + ".staging-" + entry.path[len(base) + 9:].split("/", 1)[0]
                 for entry in storage.iter_files(base + ".staging-*/**")}
        return sorted(found)
    import os
    parent, name = os.path.split(base)
    if not os.path.isdir(parent or "."):
        return []
    return sorted(os.path.join(parent, entry) for entry in os.listdir(parent or ".")
                  if entry.startswith(name + ".staging-") and os.path.isdir(os.path.join(parent, entry)))


def clean_leftovers(output_dir: str, now: float | None = None) -> dict:
    """Removes staging directories left next to output_dir by runs that died (SIGKILL, OOM, lost VM) more than
    _STALE_STAGING_HOURS ago; reports younger ones, which may belong to a run still going. Never touches the
    dataset itself. Returns {"removed": [...], "kept": [...]}."""
    now = time.time() if now is None else now
    removed, kept = [], []
    for path in _leftover_staging_dirs(output_dir):
        match = re.search(r"\.staging-(\d{8}T\d{6})-", path)
        try:
            started = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%S")) if match else None
        except ValueError:
            started = None
        if started is not None and now - started > _STALE_STAGING_HOURS * 3600:
            storage.delete_tree(path)
            _LOG.warning("preprocess: removed %s, left by a run that did not finish (started %s UTC)",
                         path, match.group(1))
            removed.append(path)
        else:
            _LOG.warning("preprocess: %s was left by a run that did not finish, or belongs to one still running; "
                         "it is not part of the dataset. Remove it once no other run writes to %s "
                         "(runs remove such directories after %g hours)", path, output_dir, _STALE_STAGING_HOURS)
            kept.append(path)
    return {"removed": removed, "kept": kept}


def check_rejections(metadata: dict, max_rejected_fraction: float) -> str | None:
    """A message when more than max_rejected_fraction of the files read were rejected, else None."""
    read, rejected = metadata["read"], sum(metadata["rejected"].values())
    if not read or rejected / read <= max_rejected_fraction:
        return None
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(metadata["rejected"].items(), key=lambda r: -r[1]))
    return (f"{rejected} of {read} files ({rejected / read:.0%}) were rejected, more than --max_rejected_fraction "
            f"{max_rejected_fraction:g} ({reasons})")


def _metadata(config, counts, num_shards, started_at, finished_at, seconds, runner) -> dict:
    splits = {split: {name: 0 for name in config.class_names} for split in features.SPLITS}
    rejected, files = {}, []
    for key, value in counts.items():
        kind, _, rest = key.partition("/")
        if kind == "written":
            split, class_name = rest.split("/", 1)
            splits[split][class_name] += value
        elif kind == "rejected":
            rejected[rest] = value
        elif kind == "file":
            files.append(rest)
    for per_class in splits.values():
        per_class["total"] = sum(per_class.values())
    written = sum(per_class["total"] for per_class in splits.values())
    read = counts.get("read", 0)
    return {
        "schema_version": features.SCHEMA_VERSION,
        "image_size": [config.image_size, config.image_size],
        "class_names": list(config.class_names),
        "counts": splits,
        "num_shards": num_shards,
        "read": read,
        "written": written,
        "duplicates": counts.get("duplicate", 0),
        "rejected": dict(sorted(rejected.items())),
        "near_duplicates": {"linked_images": counts.get("near_duplicate/linked", 0),
                            "unconverged_images": counts.get("near_duplicate/unconverged", 0)},
        "files": sorted(files),
        "inputs": list(config.inputs),
        "options": config.recorded(),
        "runner": runner,
        "seconds": round(seconds, 1),
        "images_per_second": round(read / seconds, 1) if seconds > 0 else None,
        "code_version": provenance.code_version(),
        "started_at": started_at,
        "finished_at": finished_at,
    }


def format_summary(metadata: dict, output_dir: str) -> str:
    lines = [f"preprocess: {metadata['read']} files read in {metadata['seconds']} s "
             f"({metadata['images_per_second']} files/s); dataset in {output_dir}"]
    for split, per_class in metadata["counts"].items():
        classes = ", ".join(f"{name} {n}" for name, n in per_class.items() if name != "total")
        lines.append(f"  {split:<10} {per_class['total']:>7}  ({classes}; {metadata['num_shards'][split]} shard(s))")
    lines.append(f"  duplicates {metadata['duplicates']:>7}  (exact copies written once)")
    near = metadata["near_duplicates"]
    lines.append(f"  near-copies linked: {near['linked_images']} images"
                 + (f"; {near['unconverged_images']} not settled: raise --link_rounds" if near["unconverged_images"]
                    else ""))
    rejected = metadata["rejected"]
    lines.append(f"  rejected   {sum(rejected.values()):>7}  "
                 + (", ".join(f"{reason} {n}" for reason, n in rejected.items()) or "")
                 + (f"  (see {output_dir}/rejected-*.jsonl)" if rejected else ""))
    return "\n".join(lines)


def run(argv=None, test_pipeline=None) -> dict:
    """Parses flags, checks them, builds and runs the pipeline, waits, writes metadata.json; returns it.

    Returns {"skipped": True, ...metadata} without running anything when --skip_if_current finds the
    dataset up to date. Bad flags raise SystemExit with a message saying what to change.
    """
    options = PipelineOptions(argv)
    opts = options.view_as(PreprocessOptions)
    try:
        config = config_from_options(options)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    storage.check_patterns_match(config.inputs)
    current = _check_output_dir(config, opts.overwrite, opts.skip_if_current)
    if current is not None:
        print(f"preprocess: dataset is up to date in {config.output_dir} (same inputs and options); nothing to do")
        return {"skipped": True, **current}

    clean_leftovers(config.output_dir)
    num_shards = plan_shards(config)
    staging = _staging_dir(config.output_dir)
    standard = options.view_as(StandardOptions)
    if standard.runner == "DaskRunner":  # Beam only knows it by its full name
        standard.runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
    runner = standard.runner or "DirectRunner"
    started_at, started = provenance.utc_now(), time.monotonic()
    _LOG.info("preprocess: %s -> %s (staging %s), shards %s, runner %s",
              ", ".join(config.inputs), config.output_dir, staging, num_shards, runner)
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    try:
        build(pipeline, config, staging, num_shards)
        result = pipeline.run()
        result.wait_until_finish()
        if hasattr(result, "client"):  # DaskRunner leaves its dask.distributed client open
            result.client.close()
        counts_path = storage.join(staging, _COUNTS_FILE)
        counts = storage.read_json(counts_path)
        FileSystems.delete([counts_path])
        seconds = time.monotonic() - started
        metadata = _metadata(config, counts, num_shards, started_at, provenance.utc_now(), seconds, runner)
        too_many_rejected = check_rejections(metadata, config.max_rejected_fraction)
        if too_many_rejected:
            # No dataset is published (an existing one stays as it was); the run's output, rejection list included,
            # is kept next to it for inspection, with failure.json instead of the metadata.json completion marker.
            failed = staging.replace(".staging-", ".failed-", 1)
            storage.replace_directory(staging, failed)
            storage.write_json(storage.join(failed, "failure.json"), {"error": too_many_rejected, **metadata})
            print(format_summary(metadata, failed), file=sys.stderr)
            raise SystemExit(f"error: {too_many_rejected}. The dataset in {config.output_dir} was not written; the "
                             f"rejected files and their reasons are in {failed}/rejected-*.jsonl. Fix the input "
                             f"(wrong --input or --label_from?) or raise --max_rejected_fraction.")
        storage.replace_directory(staging, config.output_dir, marker=features.METADATA_FILE)
    except BaseException:
        storage.delete_tree(staging)
        raise
    accounted = metadata["written"] + metadata["duplicates"] + sum(metadata["rejected"].values())
    if accounted != metadata["read"]:
        _LOG.error("preprocess: %d files read but %d accounted for", metadata["read"], accounted)
    storage.write_json(storage.join(config.output_dir, features.METADATA_FILE), metadata)  # last: completion marker
    print(format_summary(metadata, config.output_dir))
    return metadata


def _print_help() -> None:
    import argparse
    parser = argparse.ArgumentParser(
        prog="catsdogs-preprocess", description=__doc__.split("\n\n")[0],
        epilog="Beam flags pass through: --runner (default DirectRunner), --direct_running_mode multi_processing "
               "--direct_num_workers N, --dask_client_address HOST:PORT, --project --region --temp_location "
               "--setup_file ./setup.py for DataflowRunner. See docs/PREPROCESS.md.")
    PreprocessOptions._add_argparse_args(parser)
    parser.print_help()


def _is_worth_forwarding(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "Discarding unparseable args" in message or "No semi_persistent_directory" in message:
        return False
    return record.levelno >= logging.WARNING or "preprocess:" in message


def main(argv=None) -> None:
    """Console entry point `catsdogs-preprocess`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help()
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Worker processes (multi_processing mode) send their log records to this logger; let our progress lines
    # through without Beam's own INFO chatter, nor two warnings every worker repeats that mean nothing here
    # (workers don't know our flags, and the DirectRunner has no semi-persistent directory).
    forwarded = logging.getLogger("apache_beam.runners.portability.local_job_service")
    forwarded.setLevel(logging.INFO)
    forwarded.addFilter(_is_worth_forwarding)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in argv):
        argv.append("--runner=DirectRunner")
    run(argv)


if __name__ == "__main__":
    main()
