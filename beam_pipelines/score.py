"""Batch scoring: classify every image under some folders with an exported model, on Apache Beam.

Stages (one per line in `build`):
  ListImages      folders / globs, local or gs://, listed lazily and recursively (storage.ListFiles)
  JoinOnPath      CoGroupByKey of the listed paths with rows of earlier runs (--skip_scored): each path once,
                  files the same model version already scored are `skipped`
  DecodeImages    imaging.decode_image at the model's input_size, per file, before batching, in a child process
                  (isolation.DecodeRunner: a decoder that hangs or crashes costs that file); unusable files go
                  to the errors output with their reason and never reach (or break) a batch
  Score           RunInference(KeyedModelHandler(PixelsModelHandler)): batches of --min/--max_batch_size
                  through the SavedModel's `serve_pixels`, one model per worker process
  WritePredictions, WriteErrors   sharded files via WriteToText (plain shard files on Dask), into a staging dir
  CountOutcomes   the run's counts, computed in the pipeline (runners such as Dask report no metrics)
Then the launcher swaps the staging dir into <output_dir>/<run_id>/ (a re-run of a run id replaces it) and
writes summary.json last. Every listed file is in exactly one of predictions-* and errors-* (or is skipped).

Command (local; add --direct_running_mode=multi_processing --direct_num_workers=N for big folders):
  python -m beam_pipelines.score --model work/model/export --input ../shared/data/kaggle-fullres \\
      --output_dir work/scores
Other runners: docs/SCORING.md (Dataflow, Dask). Exit status 1 and a message when more than
--max_error_rate of the files are rejected; the outputs are written anyway.

Cost (measured on 2 shared CPU cores, resnet_lite at 160x160, the 1,000 kaggle-fullres photos): about 6 s of
start-up (imports, model load), then 110-125 images/s, the model's own speed on those cores (serve_pixels alone:
~110 images/s; decoding a full-size JPEG costs ~1.5 ms). Memory per worker: one model plus a batch of images.
"""

import argparse
import csv
import datetime
import difflib
import io
import json
import logging
import os
import posixpath
import sys
import threading
import time
import zlib
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, _BeamArgumentParser

from beam_pipelines import imaging, isolation, model_handler, storage
from beam_pipelines.options import ScoreOptions
from trainer import features, provenance

NAMESPACE = "catsdogs.score"
PREDICTION_FIELDS = ("path", "predicted_class", "probability", "model_version", "run_id", "scored_at")
ERROR_FIELDS = ("path", "reason", "detail")
READ_ERROR = "read_error"  # besides imaging.REASONS: the file could not be read at all
FILE_TOO_LARGE = "file_too_large"
COUNTS_FILE = "_counts.json"  # written by the pipeline, folded into summary.json by the launcher
SUMMARY_FILE = "summary.json"
PROGRESS_SECONDS = 30.0
BATCH_GROUPS = 1024  # DaskRunner only: images are spread over this many keys, then cut into batches
DASK_NUM_SHARDS = 4

_LOGGER = logging.getLogger(__name__)


def staging_dir(output_dir: str, run_id: str) -> str:
    return storage.join(output_dir, f".staging-{run_id}")


def run_dir(output_dir: str, run_id: str) -> str:
    return storage.join(output_dir, run_id)


def default_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---- per-element functions ---------------------------------------------------------------------------------------

class DecodeImagesFn(beam.DoFn):
    """(path, size) -> (path, uint8 pixels, None), or (path, None, {path, reason, detail}) for an unusable file.

    One output, tagged by which slot is set, rather than Beam tagged outputs: the DaskRunner mixes the
    tagged outputs of a DoFn into one collection. `decoded_images` and `rejected_files` split it.
    decode_timeout > 0 decodes in a child process (isolation.DecodeRunner), 0 in this one."""

    def __init__(self, input_size, max_file_bytes: int, decode_timeout: float = 0.0,
                 decode_fn: str = isolation.DEFAULT_DECODE_FN):
        self._size = tuple(input_size)
        self._max_file_bytes = max_file_bytes
        self._decode_timeout = decode_timeout
        self._decode_fn = decode_fn

    def setup(self):
        self._decoder = isolation.DecodeRunner(self._decode_timeout, self._decode_fn)

    def teardown(self):
        self._decoder.close()

    def process(self, element):
        path, size = element
        try:
            if size > self._max_file_bytes:
                raise imaging.ImageRejected(FILE_TOO_LARGE, f"{size} bytes is over --max_file_mb")
            try:
                data = storage.read_bytes(path)
            except Exception as error:  # noqa: BLE001 - any storage failure is this file's problem only
                raise imaging.ImageRejected(READ_ERROR, f"{type(error).__name__}: {error}") from None
            outcome = self._decoder.decode(data, self._size, imaging.DEFAULT_MAX_PIXELS)
            if outcome[0] == "rejected":
                raise imaging.ImageRejected(*outcome[1:])
            pixels = outcome[1].pixels
        except imaging.ImageRejected as rejected:
            beam.metrics.Metrics.counter(NAMESPACE, f"failed_{rejected.reason}").inc()
            yield path, None, {"path": path, "reason": rejected.reason, "detail": rejected.detail}
            return
        yield path, pixels, None


def decoded_images(outcome):
    path, pixels, _ = outcome
    if pixels is not None:
        yield path, pixels


def rejected_files(outcome):
    _, _, error = outcome
    if error is not None:
        yield error


def split_scored(joined):
    """(path, {"matched": [sizes], "scored": [...]}) -> (path, size, already scored?) for each listed path, once."""
    path, groups = joined
    sizes = list(groups["matched"])
    if not sizes:  # a path only earlier runs know about: gone from the inputs, nothing to do
        return
    beam.metrics.Metrics.counter(NAMESPACE, "matched").inc()
    scored = any(True for _ in groups["scored"])
    if scored:
        beam.metrics.Metrics.counter(NAMESPACE, "skipped").inc()
    yield path, sizes[0], scored


def unscored_files(item):
    path, size, scored = item
    if not scored:
        yield path, size


def scored_files(item):
    path, _, scored = item
    if scored:
        yield path


def is_prediction_file(path: str) -> bool:
    """Prediction shards of finished runs: not staging dirs, not the aside copies replace_directory removes."""
    name = posixpath.basename(path)
    parts = path.split("/")
    return (name.startswith("predictions-") and name.endswith((".jsonl", ".csv"))
            and not any(part.startswith(".staging-") or ".old-" in part for part in parts[:-1]))


def read_scored_paths(element, model_version: str, exclude_prefixes):
    """A previous prediction file -> (path, True) for each row scored by model_version, streaming."""
    file_path, _ = element
    if not is_prediction_file(file_path) or file_path.startswith(tuple(exclude_prefixes)):
        return
    with FileSystems.open(file_path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        rows = csv.DictReader(text) if file_path.endswith(".csv") else (json.loads(line) for line in text
                                                                          if line.strip())
        for row in rows:
            if str(row.get("model_version")) == model_version and row.get("path"):
                yield row["path"], True


def format_prediction(element, model_version: str, run_id: str) -> dict:
    path, prediction = element
    beam.metrics.Metrics.counter(NAMESPACE, "scored").inc()
    beam.metrics.Metrics.counter(NAMESPACE, f"class_{prediction.class_name}").inc()
    return {"path": path, "predicted_class": prediction.class_name, "probability": prediction.probability,
            "model_version": model_version, "run_id": run_id, "scored_at": prediction.scored_at}


def scored_keys(row: dict, class_names) -> list[str]:
    """Count keys of one prediction: scored, its class and, when the file's folder names a class (`cat/`, `Dogs/`),
    whether the prediction agrees with it: scoring a labelled folder then reports its accuracy for free."""
    keys = ["scored", "class:" + row["predicted_class"]]
    folder = posixpath.basename(posixpath.dirname(row["path"]))
    label = features.label_for_name(folder, class_names)
    if label is not None:
        keys.append("folder_label:" + ("agrees" if class_names[label] == row["predicted_class"] else "differs"))
    return keys


def to_json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def to_csv_line(row: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([row[field] for field in PREDICTION_FIELDS])
    return buffer.getvalue()[:-1]  # WriteToText adds the newline


def csv_header() -> str:
    return ",".join(PREDICTION_FIELDS)


class ReportProgressFn(beam.DoFn):
    """Passes outcome keys through and logs, per worker process, files done and rate every 30 s."""

    _lock = threading.Lock()
    _state = {"done": 0, "scored": 0, "failed": 0, "start": None, "last": None}

    def process(self, key):
        if key == "scored" or key.startswith("failed:"):
            state = self._state
            with self._lock:
                now = time.monotonic()
                if state["start"] is None:
                    state["start"] = state["last"] = now
                state["done"] += 1
                state["scored" if key == "scored" else "failed"] += 1
                if now - state["last"] >= PROGRESS_SECONDS:
                    state["last"] = now
                    rate = state["done"] / max(now - state["start"], 1e-9)
                    _LOGGER.warning("progress (worker pid %d): %d files done (%d scored, %d failed), %.1f files/s",
                                    os.getpid(), state["done"], state["scored"], state["failed"], rate)
        yield key


class CountKeysFn(beam.CombineFn):
    """Outcome keys -> {key: count}."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, counts, key):
        counts[key] += 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts):
        return dict(counts)


def write_counts(counts: dict, path: str) -> str:
    storage.write_json(path, counts)
    return path


# ---- pipeline ----------------------------------------------------------------------------------------------------

def shard_path(prefix: str, index: int, num_shards: int, suffix: str) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def write_shard(group, prefix: str, suffix: str, num_shards: int, header: str | None) -> str:
    index, lines = group
    path = shard_path(prefix, index, num_shards, suffix)
    text = "".join(line + "\n" for line in ([header] if header else []) + list(lines))
    storage.write_bytes(path, text.encode("utf-8"))
    return path


class WriteShards(beam.PTransform):
    """Lines -> num_shards files <prefix>-SSSSS-of-NNNNN<suffix> (those that get lines; see fill_missing_shards)."""

    def __init__(self, prefix: str, suffix: str, num_shards: int, header: str | None = None):
        super().__init__()
        self._args = (prefix, suffix, num_shards, header)

    def expand(self, lines):
        num_shards = self._args[2]
        return (lines
                | "KeyByShard" >> beam.Map(lambda line: (zlib.crc32(line.encode("utf-8")) % num_shards, line))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.Map(write_shard, *self._args))


def fill_missing_shards(prefix: str, suffix: str, num_shards: int, header: str | None = None) -> None:
    """Writes the shards WriteShards had no lines for (empty, or just the header), so all N exist."""
    for index in range(num_shards):
        path = shard_path(prefix, index, num_shards, suffix)
        if not storage.exists(path):
            write_shard((index, []), prefix, suffix, num_shards, header)


def drops_finish_bundle_output(options) -> bool:
    """True on the DaskRunner (Beam 2.77), whose bundles keep only what DoFn.process emits."""
    return "dask" in str(options.view_as(StandardOptions).runner).lower()


def split_batches(group, max_batch_size: int):
    _, items = group
    items = list(items)
    for start in range(0, len(items), max_batch_size):
        yield items[start:start + max_batch_size]


def build(pipeline, options, model_info):
    """Adds the scoring stages to pipeline. options.model must already be a resolved version directory and
    options.run_id set (run() does both). Returns {"predictions", "errors", "counts"} PCollections."""
    opts = options.view_as(ScoreOptions)
    staging = staging_dir(opts.output_dir, opts.run_id)
    version = str(model_info["model_version"])
    suffix = "." + opts.format

    matched = (pipeline
               | "ListImages" >> storage.ListFiles(opts.input, NAMESPACE)
               | "DropFolderMarkers" >> beam.Filter(lambda element: not element[0].endswith("/")))
    if opts.skip_scored:
        exclude = [run_dir(opts.output_dir, opts.run_id).rstrip("/") + "/", staging + "/"]
        scored_before = (pipeline
                         | "ListPreviousRuns" >> storage.ListFiles(opts.skip_scored, NAMESPACE + ".previous")
                         | "ReadPreviousRows" >> beam.FlatMap(read_scored_paths, version, exclude))
    else:
        scored_before = pipeline | "NoPreviousRuns" >> beam.Create([]).with_output_types(tuple[str, bool])
    listed = ({"matched": matched, "scored": scored_before}
              | "JoinOnPath" >> beam.CoGroupByKey()
              | "SplitScored" >> beam.FlatMap(split_scored))
    todo = listed | "KeepUnscored" >> beam.FlatMap(unscored_files)
    skipped = listed | "KeepScored" >> beam.FlatMap(scored_files)

    outcomes = todo | "DecodeImages" >> beam.ParDo(DecodeImagesFn(
        model_info["input_size"], opts.max_file_mb * 1024 * 1024, opts.decode_timeout_seconds, opts.decode_fn))
    decoded = outcomes | "DecodedImages" >> beam.FlatMap(decoded_images)
    errors = outcomes | "RejectedFiles" >> beam.FlatMap(rejected_files)
    handler = KeyedModelHandler(model_handler.PixelsModelHandler(
        opts.model, model_info, min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size,
        intra_op_threads=opts.intra_op_threads, inter_op_threads=2 if opts.intra_op_threads else 0,
        large_model=opts.share_model_across_processes))
    num_shards = opts.num_shards
    if drops_finish_bundle_output(options):
        # RunInference's BatchElements (and WriteToText without fixed shards) emit their last output from
        # finish_bundle, which the DaskRunner drops: form batches with a GroupByKey instead, and fix the shards.
        batches = (decoded
                   | "KeyForBatching" >> beam.Map(lambda item: (zlib.crc32(item[0].encode()) % BATCH_GROUPS, item))
                   | "GroupForBatching" >> beam.GroupByKey()
                   | "SplitBatches" >> beam.FlatMap(split_batches, opts.max_batch_size))
        inferred = batches | "Score" >> RunInference(handler.with_no_batching())
        num_shards = num_shards or DASK_NUM_SHARDS
    else:
        inferred = decoded | "Score" >> RunInference(handler)
    predictions = inferred | "FormatPredictions" >> beam.Map(format_prediction, version, opts.run_id)

    to_line = to_csv_line if opts.format == "csv" else to_json_line
    header = csv_header() if opts.format == "csv" else None
    if drops_finish_bundle_output(options):
        # The DaskRunner recomputes side inputs inside each consumer, so WriteToText's initialise / write /
        # finalise steps run more than once and race. Plain shard files are safe here: the whole staging
        # directory is published only after the pipeline succeeded.
        prediction_files = (predictions
                            | "SerializePredictions" >> beam.Map(to_line)
                            | "WritePredictions" >> WriteShards(storage.join(staging, "predictions"), suffix,
                                                                num_shards, header))
        error_files = (errors
                       | "SerializeErrors" >> beam.Map(to_json_line)
                       | "WriteErrors" >> WriteShards(storage.join(staging, "errors"), ".jsonl", num_shards))
    else:
        prediction_files = (predictions
                            | "SerializePredictions" >> beam.Map(to_line)
                            | "WritePredictions" >> beam.io.WriteToText(
                                storage.join(staging, "predictions"), file_name_suffix=suffix,
                                num_shards=num_shards, header=header))
        error_files = (errors
                       | "SerializeErrors" >> beam.Map(to_json_line)
                       | "WriteErrors" >> beam.io.WriteToText(storage.join(staging, "errors"),
                                                              file_name_suffix=".jsonl", num_shards=num_shards))

    # Everything ends in one last step that depends on both sinks: runners that compute only the final
    # step's inputs (the DaskRunner) then still write every output, and counts.json proves both finished.
    outcome_keys = (
        (matched | "KeyMatched" >> beam.Map(lambda _: "listed"),
         todo | "KeyAttempted" >> beam.Map(lambda _: "attempted"),
         skipped | "KeySkipped" >> beam.Map(lambda _: "skipped"),
         errors | "KeyFailed" >> beam.Map(lambda row: "failed:" + row["reason"]),
         predictions | "KeyScored" >> beam.FlatMap(scored_keys, tuple(model_info["class_names"])),
         prediction_files | "KeyPredictionFiles" >> beam.Map(lambda _: "files:predictions"),
         error_files | "KeyErrorFiles" >> beam.Map(lambda _: "files:errors"))
        | "FlattenOutcomes" >> beam.Flatten())
    counts = (outcome_keys
              | "ReportProgress" >> beam.ParDo(ReportProgressFn())
              | "CountOutcomes" >> beam.CombineGlobally(CountKeysFn()).without_defaults()
              | "WriteCounts" >> beam.Map(write_counts, storage.join(staging, COUNTS_FILE)))
    return {"predictions": predictions, "errors": errors, "counts": counts}


# ---- launcher ----------------------------------------------------------------------------------------------------

def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catsdogs-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Beam's own flags pass through: --runner (default DirectRunner), --direct_running_mode, "
               "--direct_num_workers, --project, --region, --temp_location, --setup_file, --sdk_container_image, "
               "--dask_client_address, ... (see docs/SCORING.md).")
    ScoreOptions._add_argparse_args(parser)
    return parser


def check_flags(argv) -> None:
    """Fails with a message naming the flag and a likely fix when argv has a flag no Beam option class knows
    (Beam itself only warns and drops it, so a typo such as --max_batchsize would silently be ignored)."""
    if any(arg.startswith("--dask") for arg in argv):
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
        except ImportError:
            raise SystemExit("error: --dask_* flags need apache-beam[dask]: pip install 'apache-beam[dask]'") from None
    parser = _BeamArgumentParser(allow_abbrev=False)
    subset = {}
    for cls in PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if flags:
        known = [option for action in parser._actions for option in action.option_strings]
        hints = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=1)
            hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        raise SystemExit(f"error: unknown flag(s): {', '.join(hints)}; run `python -m beam_pipelines.score --help` "
                         f"for the scoring flags")
    positional = [arg for arg in unknown if not arg.startswith("-")]
    if positional:
        raise SystemExit(f"error: unexpected argument(s) {positional}; every value needs its flag, e.g. "
                         f"--input {positional[0]}")


def _fail(message: str):
    raise SystemExit(f"error: {message}")


def _resolve_options(argv) -> tuple[PipelineOptions, dict]:
    """Parses and checks every flag, the model and the inputs: everything that can fail before scoring."""
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        raise SystemExit(0)
    check_flags(argv)
    options = PipelineOptions(argv)
    score = options.view_as(ScoreOptions)
    missing = [flag for flag, value in (("--model", score.model), ("--input", score.input),
                                        ("--output_dir", score.output_dir)) if not value]
    if missing:
        _fail(f"missing {', '.join(missing)}: pass --model EXPORT_DIR --input IMAGES --output_dir SCORES_DIR "
              f"(run `python -m beam_pipelines.score --help` for every flag)")
    standard = options.view_as(StandardOptions)
    if not standard.runner:  # left unset, Beam would try Prism, which needs a download
        standard.runner = "DirectRunner"
    if standard.runner == "DaskRunner":  # Beam knows it only by its full name
        standard.runner = "apache_beam.runners.dask.dask_runner.DaskRunner"
    if score.max_batch_size < score.min_batch_size:
        _fail(f"--max_batch_size {score.max_batch_size} is below --min_batch_size {score.min_batch_size}; "
              f"raise --max_batch_size or lower --min_batch_size")
    if score.num_shards < 0:
        _fail("--num_shards must be 0 (runner decides) or a positive number of files")
    if not 0.0 <= score.decode_timeout_seconds <= 3600:
        _fail(f"--decode_timeout_seconds must be between 0 (decode in the worker process) and 3600 "
              f"(got {score.decode_timeout_seconds:g})")
    try:
        isolation.load_function(score.decode_fn)  # fail at launch, not on a worker
    except ValueError as error:
        _fail(f"--decode_fn: {error}")
    if not storage.is_gcs(score.output_dir):  # listed paths are absolute: so must the run dir excluded from them be
        score.output_dir = os.path.abspath(score.output_dir)
    try:
        score.model, info = model_handler.resolve_and_check_model(score.model, score.allowed_model_prefix)
    except model_handler.ModelError as error:
        _fail(str(error))
    storage.check_patterns_match(score.input)
    score.run_id = score.run_id or default_run_id()
    direct = options.view_as(DirectOptions)
    if (not score.intra_op_threads and "direct" in str(standard.runner).lower()
            and direct.direct_running_mode == "multi_processing"):
        workers = direct.direct_num_workers or os.cpu_count() or 1
        score.intra_op_threads = max(1, (os.cpu_count() or 1) // workers)
    return options, info


class _Heartbeat:
    """Logs that the launcher is still waiting every 30 s, for runners whose workers log elsewhere."""

    def __init__(self, run_id: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(run_id,), daemon=True)

    def _beat(self, run_id):
        start = time.monotonic()
        while not self._stop.wait(PROGRESS_SECONDS):
            _LOGGER.warning("scoring run %s still running after %.0f s", run_id, time.monotonic() - start)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def sink_leftovers(staging: str) -> set[str]:
    """Temporary folders of WriteToText that a runner left behind (the DaskRunner does) in the staging dir."""
    prefix = staging.rstrip("/") + "/"
    folders = set()
    for metadata in storage.iter_files(prefix):
        top, _, rest = metadata.path[len(prefix):].partition("/")
        if top.startswith("beam-temp-") and rest:
            folders.add(prefix + top)
    return folders


def _folder_label_check(counts: dict) -> dict | None:
    """Agreement of predictions with class-named parent folders, or None when no scored file sits in one."""
    agrees, differs = counts.get("folder_label:agrees", 0), counts.get("folder_label:differs", 0)
    if not agrees + differs:
        return None
    return {"images": agrees + differs, "agree": agrees, "accuracy": round(agrees / (agrees + differs), 4)}


def summarize(counts: dict, info: dict, options, started_at: str, seconds: float, outputs: list[str]) -> dict:
    score = options.view_as(ScoreOptions)
    failed = {key.split(":", 1)[1]: n for key, n in sorted(counts.items()) if key.startswith("failed:")}
    classes = {name: counts.get(f"class:{name}", 0) for name in info["class_names"]}
    scored, skipped = counts.get("scored", 0), counts.get("skipped", 0)
    attempted = counts.get("attempted", 0)
    failed_total = sum(failed.values())
    return {
        "run_id": score.run_id,
        "status": "succeeded",
        "model": score.model,
        "model_name": info["model_name"],
        "model_version": str(info["model_version"]),
        "class_names": info["class_names"],
        "inputs": score.input,
        "skip_scored": score.skip_scored or [],
        "format": score.format,
        "matched": attempted + skipped,
        "listed": counts.get("listed", 0),
        "scored": scored,
        "failed": failed_total,
        "failed_by_reason": failed,
        "skipped": skipped,
        "class_counts": classes,
        "folder_labels": _folder_label_check(counts),
        "error_rate": round(failed_total / attempted, 6) if attempted else 0.0,
        "max_error_rate": score.max_error_rate,
        "seconds": round(seconds, 3),
        "images_per_second": round(scored / seconds, 2) if seconds > 0 else 0.0,
        "output_files": sorted(outputs),
        "runner": str(options.view_as(StandardOptions).runner),
        "options": {k: v for k, v in options.get_all_options(drop_default=True).items()},
        "code_version": provenance.code_version(),
        "started_at": started_at,
        "finished_at": provenance.utc_now(),
    }


def run(argv=None, test_pipeline=None) -> dict:
    """Parses argv, checks the model and inputs, runs the scoring pipeline, publishes the run and returns
    its summary. Exits (SystemExit) with a message on a bad flag or model, or when --max_error_rate is exceeded."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options, info = _resolve_options(argv)
    score = options.view_as(ScoreOptions)
    staging = staging_dir(score.output_dir, score.run_id)
    final = run_dir(score.output_dir, score.run_id)
    storage.delete_tree(staging)  # leftovers of a run that crashed before its swap
    _LOGGER.warning("scoring %s with model %s (version %s) into %s", score.input, score.model,
                    info["model_version"], final)

    started_at, start = provenance.utc_now(), time.monotonic()
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline, options, info)
    with _Heartbeat(score.run_id):
        result = pipeline.run()
        try:
            result.wait_until_finish()
        finally:
            client = getattr(result, "client", None)  # the DaskRunner's connection to the cluster
            if client is not None:
                client.close()
    seconds = time.monotonic() - start

    counts_path = storage.join(staging, COUNTS_FILE)
    if not storage.exists(counts_path):
        _fail(f"the pipeline finished without writing {counts_path}; its outputs are incomplete, re-run it")
    counts = storage.read_json(counts_path)
    FileSystems.delete([counts_path])
    if drops_finish_bundle_output(options):
        shards = score.num_shards or DASK_NUM_SHARDS
        fill_missing_shards(storage.join(staging, "predictions"), "." + score.format, shards,
                            csv_header() if score.format == "csv" else None)
        fill_missing_shards(storage.join(staging, "errors"), ".jsonl", shards)
    for leftover in sink_leftovers(staging):
        storage.delete_tree(leftover)
    outputs = [posixpath.basename(m.path) for m in storage.iter_files(staging.rstrip("/") + "/")]
    summary = summarize(counts, info, options, started_at, seconds, outputs)
    if summary["matched"] != summary["scored"] + summary["failed"] + summary["skipped"]:
        _fail(f"internal error: {summary['matched']} files matched but {summary['scored']} scored, "
              f"{summary['failed']} failed and {summary['skipped']} skipped; outputs left in {staging}")
    too_many_errors = summary["error_rate"] > score.max_error_rate
    if too_many_errors:
        summary["status"] = "failed: error rate above --max_error_rate"
    storage.replace_directory(staging, final, marker=SUMMARY_FILE)
    storage.write_json(storage.join(final, SUMMARY_FILE), summary)  # last: readers take it as "complete"
    print(json.dumps({k: summary[k] for k in ("run_id", "status", "matched", "scored", "failed",
                                               "failed_by_reason", "skipped", "class_counts", "folder_labels",
                                               "images_per_second")}, ensure_ascii=False))
    if too_many_errors:
        _fail(f"{summary['failed']} of {summary['matched'] - summary['skipped']} files were rejected "
              f"({summary['error_rate']:.1%} > --max_error_rate {score.max_error_rate:.1%}), by reason "
              f"{summary['failed_by_reason']}; see {storage.join(final, 'errors-*.jsonl')}. Check --input points "
              f"at image folders, or raise --max_error_rate")
    return summary


def main():
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()


if __name__ == "__main__":
    main()
