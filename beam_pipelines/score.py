"""Batch scoring: classify every image under some folders with an exported model, on Apache Beam.

Stages (one per line in `build`; one element per batch of files from the listing on, never one per image):
  ListImages        folders / globs, local or gs://, listed as a stream into batches of --files_per_batch files;
                    with --skip_scored, files earlier runs accounted for are skipped right there (incremental.py:
                    a watermark and a short list of recent keys, never the history's rows)
  Score             RunInference over whole batches (inference.FilesModelHandler): files read ahead in threads,
                    decoded in a child process (isolation.py: a decoder that hangs or crashes costs that file),
                    --max_batch_size images per model call through the SavedModel's `serve_pixels`, decoding
                    overlapped with inference; unusable files come out rejected with their reason
  CommitBatches     each batch's predictions and errors are written as their own files, then a commit marker: a
                    killed run, started again with the same --run_id, skips what its committed batches hold
  CountOutcomes     the per-batch tallies, summed (no extra step per image; works where the runner has no metrics)
Then the launcher publishes <output_dir>/<run_id>/ (summary.json last) and moves the incremental record forward.
Every listed file is in exactly one of predictions-* and errors-* (or counted as skipped).

Command (local; the scoring CronJob adds --skip_scored with its own --output_dir):
  python -m beam_pipelines.score --model work/model/export --input ../shared/data/kaggle-fullres \\
      --output_dir work/scores
Other runners: docs/SCORING.md (Dataflow, Dask). Exit status: 0 done, 1 more than --max_error_rate of the files
rejected (outputs written anyway), 2 bad flags or model, 75 another run holds this run id.

Cost: see docs/SCORING.md and benchmarks/RESULTS.md (per image: the decode and the model; per run: start-up, the
listing, and one small read of the incremental record).
"""

import datetime
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_pipelines import (
    cli,
    file_listing,
    incremental,
    inference,
    lifecycle,
    listing,
    model_handler,
    options,
    predictions,
    preflight,
)
from trainer import logger, provenance, storage

NAMESPACE = predictions.NAMESPACE
COUNTS_FILE = "_counts.json"
RESUME_KEYS = "_resume.keys"
SUMMARY_FILE = "summary.json"
# staging files that are not published
PRIVATE = (predictions.COMMITTED, COUNTS_FILE, RESUME_KEYS, lifecycle.ATTEMPT_FILE, listing.LISTING_REPORT)

_LOGGER = logging.getLogger(__name__)


def staging_dir(output_dir: str, run_id: str) -> str:
    return storage.join(output_dir, f".staging-{run_id}")


def run_dir(output_dir: str, run_id: str) -> str:
    return storage.join(output_dir, run_id)


def default_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---- the pipeline -------------------------------------------------------------------------------------------------

def build(pipeline, config: options.ScoreConfig, model_info: dict, plan: dict):
    """Adds the scoring stages to pipeline. `plan` (from `plan_run`) holds the staging dir, this attempt's batch
    prefix, the new watermark and the listing's selector. Returns the PCollection of the merged tally."""
    handler = inference.FilesModelHandler(
        config.model, model_info, max_batch_size=config.max_batch_size, max_file_bytes=config.max_file_bytes,
        max_pixels=config.max_pixels, decode_timeout=config.decode_timeout_seconds,
        intra_op_threads=plan["intra_op_threads"], inter_op_threads=2 if plan["intra_op_threads"] else 0,
        large_model=config.share_model_across_processes)
    return (pipeline
            | "ListImages" >> listing.ListImages(config.inputs, config.files_per_batch, plan["batch_prefix"],
                                                 plan["select"], report_dir=plan["staging"])
            | "Score" >> RunInference(handler.with_no_batching())
            | "CommitBatches" >> beam.ParDo(predictions.CommitBatchFn(
                plan["staging"], config.format, model_info, config.run_id, plan["new_watermark"]))
            | "CountOutcomes" >> beam.CombineGlobally(lifecycle.MergeTalliesFn()).without_defaults()
            | "WriteCounts" >> beam.Map(lambda tally: storage.write_json(
                storage.join(plan["staging"], COUNTS_FILE), tally)))


# ---- the launcher -------------------------------------------------------------------------------------------------

def _marker_paths(staging: str) -> list[str]:
    """The commit markers in a staging dir; not the temporary file of a marker whose write was killed (locally,
    storage.write_bytes writes `.tmp-*` first), which may be empty."""
    return [ref.path for ref in file_listing.list_files(storage.join(staging, predictions.COMMITTED) + "/")
            if not ref.path.rsplit("/", 1)[-1].startswith(".")]


def _read_markers(staging: str) -> list[dict]:
    """The commit markers an earlier attempt of this run left (a resume), read in parallel."""
    import concurrent.futures

    paths = _marker_paths(staging)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(storage.read_json, paths))


def plan_run(config: options.ScoreConfig, model_info: dict, runner: str, direct_workers: int) -> dict:
    """Prepares this attempt: resume an interrupted run of this run id (same model and format) or start clean, and
    load what earlier runs accounted for. Returns what `build` and `finish` need."""
    staging = staging_dir(config.output_dir, config.run_id)
    version = str(model_info["model_version"])
    attempt = lifecycle.read_attempt(staging)
    markers = []
    if attempt and attempt.get("model_version") == version and attempt.get("format") == config.format:
        markers = _read_markers(staging)
        _LOGGER.info("resuming run %s: %d batches (%d files) committed by an earlier attempt", config.run_id,
                     len(markers), sum(sum(m["counts"].values()) - _listing_counts(m["counts"]) for m in markers))
    else:
        if attempt:
            _LOGGER.info("discarding an unfinished attempt of run %s made with another model version or format",
                         config.run_id)
        storage.delete_tree(staging)
        attempt = lifecycle.write_attempt(staging, model_version=version, format=config.format,
                                          inputs=list(config.inputs))
    first_started = float(attempt["started_at_epoch"])
    new_watermark = first_started - config.incremental_margin_minutes * 60
    resume_keys = None
    if markers:
        keys = [key for marker in markers for key in incremental.unpack(marker["done"]).tolist()]
        resume_keys = storage.join(staging, RESUME_KEYS)
        storage.write_bytes(resume_keys, incremental.unpack(incremental.pack(keys)).tobytes())
    states = incremental.load(config.skip_scored, version)
    intra = config.intra_op_threads
    if not intra and "direct" in runner.lower() and direct_workers:
        intra = max(1, (os.cpu_count() or 1) // direct_workers)
    return {"staging": staging, "batch_prefix": uuid.uuid4().hex[:8], "new_watermark": new_watermark,
            "select": incremental.SkipAccounted(states, new_watermark, resume_keys), "states": states,
            "markers": markers, "first_started": first_started, "intra_op_threads": intra}


def _listing_counts(counts: dict) -> int:
    return sum(n for key, n in counts.items() if key in (listing.LISTED, incremental.SKIPPED, incremental.DONE_BEFORE))


def _folder_label_check(counts: dict) -> dict | None:
    agrees, differs = counts.get("folder_label:agrees", 0), counts.get("folder_label:differs", 0)
    if not agrees + differs:
        return None
    return {"images": agrees + differs, "agree": agrees, "accuracy": round(agrees / (agrees + differs), 4)}


def _drift(class_shares: dict, states, threshold: float) -> dict | None:
    """The largest change of a class's share against the previous run's, when there is one to compare with."""
    previous = next((state.class_shares for state in states if state.class_shares), None)
    if not previous or not class_shares:
        return None
    changes = {name: round(share - previous.get(name, 0.0), 4) for name, share in class_shares.items()}
    worst = max(changes, key=lambda name: abs(changes[name]))
    return {"previous_run": states[0].run_id, "previous_shares": previous, "change": changes,
            "largest": worst, "threshold": threshold, "drifted": abs(changes[worst]) > threshold}


def summarize(config, model_info, counts, plan, runner, started_at, seconds, outputs, steady=None) -> dict:
    names = list(model_info["class_names"])
    failed = {key.split(":", 1)[1]: n for key, n in sorted(counts.items()) if key.startswith("failed:")}
    scored, failed_total = counts.get("scored", 0), sum(failed.values())
    classes = {name: counts.get(f"class:{name}", 0) for name in names}
    shares = {name: round(n / scored, 4) for name, n in classes.items()} if scored else {}
    attempted = scored + failed_total
    return {
        "run_id": config.run_id,
        "status": "succeeded",
        "model": config.model,
        "model_name": model_info["model_name"],
        "model_version": str(model_info["model_version"]),
        "lineage": model_handler.lineage(model_info),
        "class_names": names,
        "inputs": list(config.inputs),
        "skip_scored": list(config.skip_scored),
        "format": config.format,
        "row_schema": {"version": predictions.ROW_SCHEMA_VERSION, "fields": list(predictions.row_fields(names))},
        "listed": counts.get(listing.LISTED, 0),
        "matched": counts.get(listing.LISTED, 0),
        "scored": scored,
        "failed": failed_total,
        "failed_by_reason": failed,
        "skipped": counts.get(incremental.SKIPPED, 0),
        "resumed": counts.get(incremental.DONE_BEFORE, 0),
        "class_counts": classes,
        "class_shares": shares,
        "probability_histogram": {"class": names[1], "bins": predictions.HISTOGRAM_BINS,
                                  "counts": [counts.get(f"hist:{i}", 0) for i in range(predictions.HISTOGRAM_BINS)]},
        "drift": _drift(shares, plan["states"], config.drift_threshold),
        "folder_labels": _folder_label_check(counts),
        "error_rate": round(failed_total / attempted, 6) if attempted else 0.0,
        "max_error_rate": config.max_error_rate,
        "seconds": round(seconds, 3),
        "images_per_second": round(scored / seconds, 2) if seconds > 0 else 0.0,
        "steady_images_per_second": steady,
        "output_files": sorted(outputs),
        "incremental": {"watermark": plan["new_watermark"], "margin_minutes": config.incremental_margin_minutes,
                        "previous": [state.source for state in plan["states"]]},
        "runner": runner,
        "options": dataclasses_dict(config),
        "code_version": provenance.code_version(),
        "started_at": started_at,
        "finished_at": provenance.utc_now(),
    }


def dataclasses_dict(config) -> dict:
    import dataclasses

    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def finish(config, model_info, plan, runner, started_at, seconds) -> dict:
    """After the pipeline: adds what earlier attempts committed, checks every listed file is accounted for, removes
    files of batches that never committed, publishes the run (summary.json last) and moves the incremental record."""
    staging = plan["staging"]
    counts_path = storage.join(staging, COUNTS_FILE)
    if not storage.exists(counts_path):
        raise cli.JobFailed(f"the pipeline finished without writing {counts_path}; its outputs are incomplete, "
                            f"re-run with --run_id {config.run_id} to finish it")
    tally = storage.read_json(counts_path)
    this_attempt = Counter(tally["counts"])
    worked = this_attempt.get("scored", 0) + sum(n for k, n in this_attempt.items() if k.startswith("failed:"))
    listed = this_attempt.get(listing.LISTED, 0)
    accounted = this_attempt.get(incremental.SKIPPED, 0) + this_attempt.get(incremental.DONE_BEFORE, 0) + worked
    if listed != accounted:
        raise cli.JobFailed(f"internal error: {listed} files listed but {accounted} accounted for; outputs left "
                            f"in {staging}")
    counts, recent, retry = this_attempt, list(tally.get("recent", [])), list(tally.get("retry", []))
    files = set(tally.get("files", []))
    for marker in plan["markers"]:  # what earlier attempts of this run committed
        counts = counts + Counter(marker["counts"])
        recent += incremental.unpack(marker["recent"]).tolist()
        retry += marker["retry"]
        files.update(marker["files"])
    prefix = staging.rstrip("/") + "/"
    outputs, orphans = [], []
    for ref in file_listing.list_files(prefix):
        name = ref.path[len(prefix):]
        if name.startswith(PRIVATE):
            continue
        (outputs if name in files else orphans).append(name)
    for name in orphans:  # written by a batch that was killed before its commit marker: scored again since
        storage.delete(storage.join(staging, name))
    times = tally.get("times", [])  # this attempt's rate from its first batch to its last: after start-up
    steady = round(this_attempt.get("scored", 0) / (max(times) - min(times)), 2) \
        if len(times) > 1 and max(times) > min(times) else None
    summary = summarize(config, model_info, counts, plan, runner, started_at, seconds, outputs, steady)
    too_many = summary["error_rate"] > config.max_error_rate
    if too_many:
        summary["status"] = "failed: error rate above --max_error_rate"
    final = run_dir(config.output_dir, config.run_id)
    lifecycle.publish_directory(staging, final, marker=SUMMARY_FILE, exclude=PRIVATE)
    storage.write_json(storage.join(final, SUMMARY_FILE), summary)  # last: readers take it as "complete"
    if not too_many:
        state = {"watermark": plan["new_watermark"], "recent": incremental.pack(recent), "retry": sorted(set(retry)),
                 "run_id": config.run_id, "class_shares": summary["class_shares"], "updated_at": provenance.utc_now()}
        incremental.save(config.output_dir, str(model_info["model_version"]), state)
    if summary["drift"] and summary["drift"]["drifted"]:
        drift = summary["drift"]
        _LOGGER.warning("class shares drifted: %s changed by %+.1f%% against run %s (threshold %.0f%%): %s",
                        drift["largest"], 100 * drift["change"][drift["largest"]], drift["previous_run"],
                        100 * config.drift_threshold, summary["class_shares"])
    return summary


def _resolve(argv) -> tuple[PipelineOptions, options.ScoreConfig, dict, str]:
    """Parses and checks every flag, the model and the inputs: everything that can fail before scoring."""
    pipeline_options, config, runner = cli.parse_job(argv, "catsdogs-score", options.ScoreOptions,
                                                     options.score_config)
    inputs = tuple(storage.absolute(p) for p in config.inputs)
    output_dir = storage.absolute(config.output_dir)
    skip = tuple(storage.absolute(p) for p in config.skip_scored)
    preflight.require_reachable([*inputs, output_dir, *skip, config.model])  # before anything reads from GCS
    try:
        model, info = model_handler.resolve_and_check_model(config.model, config.allowed_model_prefix)
    except model_handler.ModelError as error:
        raise cli.UsageError(str(error)) from None
    preflight.require_inputs(inputs)
    import dataclasses

    config = dataclasses.replace(config, inputs=inputs, output_dir=output_dir, skip_scored=skip, model=model,
                                 run_id=config.run_id or default_run_id())
    return pipeline_options, config, info, runner


def run(argv=None, test_pipeline=None) -> dict:
    """Parses argv, checks the model and inputs, runs the scoring pipeline, publishes the run and returns its
    summary. Exits (SystemExit) with a message on a bad flag or model (2), when another run holds the run id (75), or
    when --max_error_rate is exceeded (1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _import_tensorflow_meanwhile()
    pipeline_options, config, info, runner = _resolve(argv)
    logger.CONTEXT["run_id"] = config.run_id  # on every --log_format json line from here on
    if config.check_only:
        report = preflight.run_checks(config.inputs, config.output_dir, info["input_size"], config.max_pixels,
                                      config.max_file_bytes, {"model": config.model,
                                                              "model_version": str(info["model_version"])})
        print(json.dumps(report, ensure_ascii=False))
        preflight.require_ok(report)
        return report
    direct = pipeline_options.view_as(DirectOptions)
    workers = (direct.direct_num_workers or os.cpu_count() or 1) \
        if direct.direct_running_mode == "multi_processing" else 0
    lease = lifecycle.Lease(storage.join(config.output_dir, f".lease-{config.run_id}.json"),
                            what=f"run id {config.run_id} in {config.output_dir}")
    with lease:
        lifecycle.clean_stale_staging(config.output_dir, ".staging-", keep=staging_dir(config.output_dir,
                                                                                       config.run_id))
        plan = plan_run(config, info, runner, workers)
        _LOGGER.info("scoring %s with model %s (version %s) into %s", ", ".join(config.inputs), config.model,
                     info["model_version"], run_dir(config.output_dir, config.run_id))
        started_at, start = provenance.utc_now(), time.monotonic()
        pipeline = test_pipeline or beam.Pipeline(options=pipeline_options)
        build(pipeline, config, info, plan)
        lifecycle.run_pipeline(pipeline, progress=lambda: _progress(plan, len(config.inputs)))
        if lease.lost.is_set():
            raise cli.JobFailed(f"another run took over run id {config.run_id} while this one ran; nothing was "
                                f"published by this one")
        summary = finish(config, info, plan, runner, started_at, time.monotonic() - start)
    print(json.dumps({k: summary[k] for k in ("run_id", "status", "matched", "scored", "failed", "failed_by_reason",
                                              "skipped", "resumed", "class_counts", "folder_labels",
                                              "images_per_second")}, ensure_ascii=False))
    if summary["status"] != "succeeded":
        raise cli.JobFailed(
            f"{summary['failed']} of {summary['scored'] + summary['failed']} files were rejected "
            f"({summary['error_rate']:.1%} > --max_error_rate {config.max_error_rate:.1%}), by reason "
            f"{summary['failed_by_reason']}; see {run_dir(config.output_dir, config.run_id)}/errors-*.jsonl. Check "
            f"--input points at image folders, or raise --max_error_rate")
    return summary


def _import_tensorflow_meanwhile() -> None:
    """Starts importing TensorFlow in a background thread: the in-process runner's model load needs it, and the ~4 s
    it takes (much of it reading and initialising shared libraries, outside the GIL) then overlaps the checks at launch
    and the pipeline's construction instead of following them. Harmless where workers are other processes."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=("tensorflow",), name="import-tensorflow",
                     daemon=True).start()


def _progress(plan: dict, patterns: int) -> lifecycle.Progress:
    """Files this attempt committed (from the commit markers' names: one listing, whatever the runner) out of the
    files its listing found to score."""
    earlier = {f"{marker['batch']}" for marker in plan["markers"]}
    done = 0
    for path in _marker_paths(plan["staging"]):
        batch, count = path.rsplit("/", 1)[-1].rsplit(".", 2)[:2]
        if batch not in earlier:
            done += int(count)
    return lifecycle.Progress(done, listing.files_to_process(plan["staging"], patterns), "files")


def main():
    cli.main(run, prog="catsdogs-score", doc=__doc__, option_classes=(options.JobOptions, options.ScoreOptions))


if __name__ == "__main__":
    main()
