"""Image folders -> a new version of a validated, deduplicated, split TFRecord dataset: what the trainer reads.

Stages (one line each in `build`; trainer/dataset_contract.py describes the dataset folder):
  ListImages        folders/globs, local or gs://, listed as a stream into batches of --files_per_batch files
  ClassifyChanges   (a dataset that grows) the listing joined by path with the current version's facts, on disk a
                    partition at a time (changes.py): unchanged files are kept as they are (never decoded again), new
                    and changed files go on in new batches, photos whose file is gone are dropped
  DecodeAndWrite    per batch: label from the folder (or file-name prefix), read, decode + resize + JPEG-encode + hash
                    in a child process, each record written straight into the shard of its content's split
                    (records.py): record bytes never cross a shuffle or a side input
  GroupBands, PropagateGroups, DecideSplits
                    the grouping, on small facts spilled to disk by the workers that made them and read a partition
                    at a time (grouping.py, spill.py): exact copies kept once, near-copies kept in one split, photos
                    of earlier versions never moved, a new near-copy follows them
  RewriteBatches    the few batches whose records the grouping changed are written again
  CountOutcomes     per-batch tallies summed; then the launcher writes metadata.json and moves `latest`

Command (all 23k photos of ../shared/data/pets-180, as `make preprocess` and the benchmark run it):
  python -m beam_pipelines.preprocess --input ../shared/data/pets-180 --output_dir /tmp/pets180-data \\
      --runner DirectRunner
Re-run with --skip_if_current over a grown folder: a new version with what changed, or exit 0 when nothing did.
Exit status: 0 done, 1 more than --max_rejected_fraction of the files rejected (no version published), 2 bad flags
or an output folder that must not be replaced, 75 another run holds the dataset. Cost: docs/PREPROCESS.md and
benchmarks/RESULTS.md.
"""

import dataclasses
import json
import logging
import posixpath
import re
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import changes, cli, file_listing, grouping, lifecycle, listing, options, preflight, records
from trainer import dataset_contract, features, provenance, storage

NAMESPACE = records.NAMESPACE
COUNTS_FILE = "_counts.json"
LEASE_FILE = ".lease.json"
CHANGES = ("new", "changed", "removed", "removed_rejected", "added")  # any of these makes a new version

_LOG = logging.getLogger(__name__)


def input_root(pattern: str) -> str:
    """The folder a pattern is read from: labels are looked for in folders from a file up to this one."""
    pattern = storage.absolute(pattern)
    wildcard = re.search(r"[*?\[]", pattern)
    if wildcard:
        prefix = pattern[:wildcard.start()]
        return prefix.rstrip("/") if prefix.endswith("/") else posixpath.dirname(prefix)
    if not pattern.endswith("/") and not storage.is_remote(pattern):
        import os

        if os.path.isfile(pattern):
            return posixpath.dirname(pattern)
    return pattern.rstrip("/")


def build(pipeline, config: options.PreprocessConfig, plan: dict):
    """Adds the preprocessing stages to `pipeline`; `plan` (from `plan_version`) says where the new version goes and
    what the current one holds. Returns the PCollection of the merged tally (also written to the version folder)."""
    version_dir, prefix = plan["version_dir"], plan["batch_prefix"]
    roots = [input_root(pattern) for pattern in config.inputs]
    listed = pipeline | "ListImages" >> listing.ListImages(config.inputs, config.files_per_batch, prefix,
                                                           report_dir=version_dir)
    tallies, kept_bands, removed = [], [], []
    if plan["previous"] is not None:
        known = pipeline | "CurrentVersionFiles" >> beam.Create(plan["facts_files"] + plan["rejection_files"])
        grown = (listed, known) | "ClassifyChanges" >> changes.ClassifyChanges(
            version_dir, config.files_per_batch, config.near_duplicate_bits, prefix)
        to_decode, kept_bands, removed = grown["batches"], [grown["bands"]], [grown["changes"]]
        tallies.append(grown["tallies"])
    else:
        to_decode = listed
    written = to_decode | "DecodeAndWrite" >> beam.ParDo(records.DecodeAndWriteFn(config, roots, version_dir))
    tallies.append(written | "DecodeTallies" >> changes.values("tally"))
    bands = (written | "NewBands" >> changes.values("bands"), *kept_bands) | "AllBands" >> beam.Flatten()

    grouped = bands | "GroupBands" >> grouping.GroupBands(config.near_duplicate_bits)
    groups = grouped["neighbours"] | "PropagateGroups" >> grouping.PropagateGroups(config.link_rounds)
    decided = (grouped["neighbours"], groups) | "DecideSplits" >> grouping.DecideSplits(config.split_ratios)
    tallies.append(decided["counts"] | "GroupCounts" >> beam.Map(
        lambda key: {"counts": {f"near_duplicate/{key}": 1}, "batches": [], "replaced": []}))

    rewritten = ((grouped["drops"], decided["changes"], *removed)
                 | "AllChanges" >> beam.Flatten()
                 | "KeyByBatch" >> beam.Map(lambda change: (change.batch, change))
                 | "GroupByBatch" >> beam.GroupByKey()
                 | "RewriteBatches" >> beam.ParDo(records.RewriteBatchFn(version_dir, config.class_names,
                                                                         plan["homes"])))
    tallies.append(rewritten | "RewriteTallies" >> changes.values("tally"))
    return (tallies
            | "AllTallies" >> beam.Flatten()
            | "CountOutcomes" >> beam.CombineGlobally(lifecycle.MergeTalliesFn()).without_defaults()
            | "WriteCounts" >> beam.Map(lambda tally: storage.write_json(storage.join(version_dir, COUNTS_FILE),
                                                                         tally)))


# ---- the launcher -------------------------------------------------------------------------------------------------

def _current(output_dir: str):
    """(version name, version folder, metadata) of the dataset `latest` names, or None when there is none."""
    root = output_dir.rstrip("/")
    if not storage.exists(f"{root}/{dataset_contract.LATEST}"):
        return None
    try:
        version_dir, metadata = dataset_contract.locate(root, storage.read_bytes, storage.exists)
    except dataset_contract.DatasetError as error:
        raise cli.UsageError(f"{error}; choose another --output_dir") from None
    return metadata["version"], version_dir, metadata


def _refuse_foreign(output_dir: str) -> None:
    """An output folder without a dataset pointer must be empty (or hold only dead, unpublished versions)."""
    prefix = output_dir.rstrip("/") + "/"
    for ref in file_listing.list_files(prefix):
        name = ref.path[len(prefix):]
        if name == LEASE_FILE or re.match(r"^v\d{5,}/", name):
            continue
        old = name == dataset_contract.METADATA_FILE or name.endswith(dataset_contract.SHARD_SUFFIX)
        raise cli.UsageError(
            f"{output_dir} already holds " + ("a dataset in the old single-folder layout" if old else
                                              f"files that are not a dataset (e.g. {ref.path})")
            + "; choose another --output_dir, or remove them")


def plan_version(config: options.PreprocessConfig, dry_run: bool = False) -> dict:
    """Decides what this run makes: the first version, a new one from scratch (--overwrite), or the current one plus
    what changed (--skip_if_current). Removes versions of runs that died before publishing (this run holds the lease),
    unless `dry_run` (--check_only: nothing is written or removed)."""
    current = _current(config.output_dir)
    previous, facts_files, rejection_files, homes, previous_batches = None, [], [], {}, []
    if current is None:
        _refuse_foreign(config.output_dir)
        number = 1
    else:
        name, version_dir, metadata = current
        number = dataset_contract.version_number(name) + 1
        differs = {key: (metadata["options"].get(key), value) for key, value in config.recorded().items()
                   if metadata["options"].get(key) != value}
        if differs and not config.overwrite:
            details = ", ".join(f"--{key} {old!r} -> {new!r}" for key, (old, new) in differs.items())
            raise cli.UsageError(f"{config.output_dir} holds a dataset ({name}) made with other options ({details}); "
                                 f"pass --overwrite to build a new version from scratch (splits may change), or "
                                 f"choose another --output_dir")
        if not config.overwrite and not config.skip_if_current:
            raise cli.UsageError(f"{config.output_dir} already holds a dataset ({name}); pass --skip_if_current to add "
                                 f"what changed in the inputs as a new version (photos keep their splits), or "
                                 f"--overwrite to build a new version from scratch (splits may change)")
        if not config.overwrite:
            previous = metadata
            for entry in metadata["batches"]:
                home = dataset_contract.join(version_dir, posixpath.dirname(entry["facts"]))
                homes[entry["batch"]] = home
                facts_files.append((dataset_contract.join(version_dir, entry["facts"]), entry["batch"]))
                previous_batches.append(records.entry_from(name, entry))
            rejection_files = [(ref.path, None) for pattern in ("rejected-*.jsonl", "duplicates-*.jsonl")
                               for ref in file_listing.list_files(storage.join(version_dir, pattern))]
    for ref in file_listing.list_files(config.output_dir.rstrip("/") + "/"):  # unpublished versions of dead runs
        match = re.match(r"^v(\d{5,})$", ref.path[len(config.output_dir.rstrip("/")) + 1:].split("/")[0])
        if match and int(match.group(1)) >= number and not dry_run:
            dead = storage.join(config.output_dir, match.group(0))
            _LOG.warning("preprocess: removing %s, left by a run that did not publish it", dead)
            storage.delete_tree(dead)
    version = dataset_contract.version_name(number)
    return {"version": version, "version_dir": storage.join(config.output_dir, version), "previous": previous,
            "previous_version": current[0] if current else None, "facts_files": facts_files,
            "rejection_files": rejection_files, "homes": homes,
            "previous_batches": previous_batches, "batch_prefix": uuid.uuid4().hex[:8]}


def assemble_metadata(config, plan, tally, runner, started_at, seconds) -> dict:
    counts = tally["counts"]
    batches = records.metadata_batches(plan["previous_batches"], tally.get("batches", []), tally.get("replaced", []))
    names = list(config.class_names)
    split_counts = {split: {name: 0 for name in names} for split in features.SPLITS}
    shards = {split: [] for split in features.SPLITS}
    for entry in batches:
        for split, shard in entry["shards"].items():
            shards[split].append({"path": shard["path"], "records": shard["records"]})
            for name, n in shard["classes"].items():
                split_counts[split][name] += n
    for per_class in split_counts.values():
        per_class["total"] = sum(per_class.values())
    rejected = {key.split("/", 1)[1]: n for key, n in sorted(counts.items()) if key.startswith("rejected/")}
    prefix = plan["batch_prefix"]
    added = sum(shard["records"] for entry in batches if entry["batch"].startswith(prefix)
                for shard in entry["shards"].values())
    previous = plan["previous"] or {}
    entry = {"version": plan["version"], "added": added, "removed": counts.get(records.REMOVED, 0),
             "changed": counts.get("changed", 0), "duplicates": counts.get("duplicate", 0),
             "rejected": sum(rejected.values()), "finished_at": provenance.utc_now()}
    return {
        "format_version": dataset_contract.FORMAT_VERSION,
        "schema_version": features.SCHEMA_VERSION,
        "version": plan["version"],
        "previous_version": plan["previous_version"] if plan["previous"] is not None else None,
        "image_size": [config.image_size, config.image_size],
        "class_names": names,
        "counts": split_counts,
        "shards": shards,
        "num_shards": {split: len(files) for split, files in shards.items()},
        "batches": batches,
        "listed": counts.get(listing.LISTED, 0),
        "read": counts.get("read", 0),
        "written": sum(per_class["total"] for per_class in split_counts.values()),
        "added": added,
        "unchanged": counts.get("unchanged", 0),
        "new": counts.get("new", 0),
        "changed": counts.get("changed", 0),
        "removed": counts.get(records.REMOVED, 0),
        "unchanged_rejected": counts.get("unchanged_rejected", 0),
        "rechecked_duplicates": counts.get("rechecked_duplicates", 0),
        "removed_rejected": counts.get("removed_rejected", 0),
        "duplicates": counts.get("duplicate", 0),
        "moved_to_group_split": counts.get("moved", 0),
        "rejected": rejected,
        "near_duplicates": {"linked_images": counts.get("near_duplicate/linked", 0),
                            "unconverged_images": counts.get("near_duplicate/unconverged", 0)},
        "history": [*previous.get("history", []), entry],
        "inputs": list(config.inputs),
        "options": config.recorded(),
        "runner": runner,
        "seconds": round(seconds, 1),
        "images_per_second": round(counts.get("read", 0) / seconds, 1) if seconds > 0 else None,
        "code_version": provenance.code_version(),
        "started_at": started_at,
        "finished_at": provenance.utc_now(),
    }


def check_rejections(metadata: dict, max_rejected_fraction: float) -> str | None:
    """A message when more than max_rejected_fraction of the files read were rejected, else None."""
    read, rejected = metadata["read"], sum(metadata["rejected"].values())
    if not read or rejected / read <= max_rejected_fraction:
        return None
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(metadata["rejected"].items(), key=lambda r: -r[1]))
    return (f"{rejected} of {read} files ({rejected / read:.0%}) were rejected, more than --max_rejected_fraction "
            f"{max_rejected_fraction:g} ({reasons})")


def format_summary(metadata: dict, where: str) -> str:
    lines = [f"preprocess: {metadata['read']} files read in {metadata['seconds']} s "
             f"({metadata['images_per_second']} files/s); dataset version {metadata['version']} in {where}"]
    if metadata["previous_version"]:
        lines.append(f"  since {metadata['previous_version']}: {metadata['added']} added, {metadata['unchanged']} "
                     f"unchanged, {metadata['changed']} changed, {metadata['removed']} removed")
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
                 + (f"  (see {where}/rejected-*.jsonl)" if rejected else ""))
    return "\n".join(lines)


def publish(output_dir: str, version: str, metadata_bytes: bytes) -> None:
    """Points `latest` at the new version, under the generation read now (this run holds the lease; the
    precondition also stops a writer that lost it)."""
    path = storage.join(output_dir, dataset_contract.LATEST)
    _, generation = storage.read_versioned(path)
    pointer = dataset_contract.pointer(version, metadata_bytes)
    # A refused write that left exactly this pointer is this run's own: GCS made it, the reply was lost, and the
    # client's retry met it (HTTP 412).
    if not storage.write_if_generation(path, pointer, generation) and storage.read_versioned(path)[0] != pointer:
        raise cli.JobFailed(f"{path} was changed by another writer while this run published {version}; {version} is "
                            f"complete but not current: re-run to publish")


def _resolve(argv) -> tuple[PipelineOptions, options.PreprocessConfig, str]:
    pipeline_options, config, runner = cli.parse_job(argv, "catsdogs-preprocess", options.PreprocessOptions,
                                                     options.preprocess_config)
    config = dataclasses.replace(config, inputs=tuple(storage.absolute(p) for p in config.inputs),
                                 output_dir=storage.absolute(config.output_dir).rstrip("/"))
    preflight.require_reachable([*config.inputs, config.output_dir])  # before anything reads from GCS
    preflight.require_inputs(config.inputs)
    return pipeline_options, config, runner


def run(argv=None, test_pipeline=None) -> dict:
    """Parses flags, plans the version, runs the pipeline, writes metadata.json and moves `latest`; returns the
    metadata. Returns {"skipped": True, ...current metadata} without a new version when --skip_if_current finds
    nothing changed. Raises cli.JobExit (a SystemExit with an exit code and a message) otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pipeline_options, config, runner = _resolve(argv)
    if config.check_only:
        plan = plan_version(config, dry_run=True)
        report = preflight.run_checks(config.inputs, config.output_dir, config.size, config.max_pixels,
                                      config.max_file_bytes, {"would_write": plan["version_dir"],
                                                              "adding_to": plan["previous_version"]})
        print(json.dumps(report, ensure_ascii=False))
        preflight.require_ok(report)
        return report
    with lifecycle.Lease(storage.join(config.output_dir, LEASE_FILE), what=f"dataset {config.output_dir}") as lease:
        plan = plan_version(config)
        version_dir = plan["version_dir"]
        _LOG.info("preprocess: %s -> %s (%s%s), runner %s", ", ".join(config.inputs), version_dir,
                  "from scratch" if plan["previous"] is None else "adding to ",
                  plan["previous_version"] if plan["previous"] is not None else "", runner)
        started_at, started = provenance.utc_now(), time.monotonic()
        pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=pipeline_options)
        build(pipeline, config, plan)
        lifecycle.run_pipeline(pipeline, progress=lambda: _progress(version_dir, config, plan))
        if lease.lost.is_set():
            raise cli.JobFailed(f"another run took over {config.output_dir} while this one ran; {version_dir} was "
                                f"not published")
        counts_path = storage.join(version_dir, COUNTS_FILE)
        tally = storage.read_json(counts_path)
        storage.delete(counts_path)
        for ref in file_listing.list_files(storage.join(version_dir, listing.LISTING_REPORT + "*.json")):
            storage.delete(ref.path)
        storage.delete_tree(records.work_dir(version_dir))
        metadata = assemble_metadata(config, plan, tally, runner, started_at, time.monotonic() - started)
        accounted = metadata["added"] + metadata["duplicates"] + sum(metadata["rejected"].values())
        if accounted != metadata["read"]:
            raise cli.JobFailed(f"internal error: {metadata['read']} files read but {accounted} accounted for; "
                                f"{version_dir} was not published")
        if plan["previous"] is not None and not any(metadata[key] for key in CHANGES):
            storage.delete_tree(version_dir)
            print(f"preprocess: dataset is up to date in {config.output_dir} ({plan['previous_version']}: same "
                  f"inputs, nothing new, changed or removed); nothing to do")
            return {"skipped": True, **plan["previous"]}
        too_many_rejected = check_rejections(metadata, config.max_rejected_fraction)
        if too_many_rejected:
            storage.write_json(storage.join(version_dir, "failure.json"), {"error": too_many_rejected, **metadata})
            print(format_summary(metadata, version_dir), file=sys.stderr)
            raise cli.JobFailed(f"{too_many_rejected}. No new version was published ({config.output_dir} is as it "
                                f"was); the rejected files and their reasons are in {version_dir}/rejected-*.jsonl "
                                f"(removed by the next run). Fix the input (wrong --input or --label_from?) or raise "
                                f"--max_rejected_fraction.")
        metadata_bytes = storage.to_json_bytes(metadata)
        storage.write_bytes(storage.join(version_dir, dataset_contract.METADATA_FILE), metadata_bytes)
        publish(config.output_dir, plan["version"], metadata_bytes)
    print(format_summary(metadata, version_dir))
    return metadata


def _progress(version_dir: str, config: options.PreprocessConfig, plan: dict) -> lifecycle.Progress:
    """Batches decoded and written so far (their facts files), out of the batches the listing will make (known for a
    first version; a growing dataset's batches are made after the join with the current version)."""
    done = sum(1 for _ in file_listing.list_files(storage.join(version_dir, "facts-*.jsonl")))
    files = listing.files_to_process(version_dir, len(config.inputs)) if plan["previous"] is None else None
    total = None if files is None else -(-files // config.files_per_batch)
    return lifecycle.Progress(done, total, "batches")


def main() -> None:
    """Console entry point `catsdogs-preprocess`."""
    cli.main(run, prog="catsdogs-preprocess", doc=__doc__,
             option_classes=(options.JobOptions, options.PreprocessOptions))


if __name__ == "__main__":
    main()
