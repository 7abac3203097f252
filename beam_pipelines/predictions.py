"""Scoring's output contract, and the step that writes it: prediction rows, error rows, per-batch files.

Prediction rows (schema version ROW_SCHEMA_VERSION, also in each run's summary.json and docs/SCORING.md):
    path             the file, as valid UTF-8 (a local name that is not shows its raw bytes as backslash escapes)
    predicted_class  class_names[1] when its probability reaches the model's threshold, else class_names[0]
    <class>_probability   the probability of class_names[1] (dog_probability for cats vs dogs), float
    confidence       the probability of the predicted class, max(p, 1 - p), float
    model_version    integer, as the export's directory name
    run_id, scored_at (UTC, one stamp per batch)
as JSON lines, CSV with a header row, or Parquet with an explicit schema (one file per batch, whatever the format).
Error rows: path, reason, detail.

`CommitBatchFn` writes a batch's predictions and errors files, then its commit marker (what a resumed run skips),
and passes the batch's tally on.
"""

import csv
import io
import json
import logging
import os
import time
from collections import Counter

import apache_beam as beam

from beam_pipelines import incremental, inference, lifecycle
from trainer import features, storage

NAMESPACE = "catsdogs.score"
ROW_SCHEMA_VERSION = 2
ERROR_FIELDS = ("path", "reason", "detail")
COMMITTED = "_committed"  # in the staging dir: one marker per committed batch
HISTOGRAM_BINS = 10

_LOGGER = logging.getLogger(__name__)


def row_fields(class_names) -> tuple[str, ...]:
    """Prediction row columns (schema version ROW_SCHEMA_VERSION): the probability is named for the class it is of."""
    return ("path", "predicted_class", f"{class_names[1]}_probability", "confidence", "model_version", "run_id",
            "scored_at")


def prediction_row(path: str, probability: float, class_names, threshold: float, model_version: int, run_id: str,
                   scored_at: str) -> dict:
    probability = float(probability)
    return {"path": storage.display_path(path),
            "predicted_class": class_names[1] if probability >= threshold else class_names[0],
            f"{class_names[1]}_probability": probability,
            "confidence": max(probability, 1.0 - probability),
            "model_version": model_version, "run_id": run_id, "scored_at": scored_at}


def parquet_schema(class_names):
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("predicted_class", pa.string()),
                      (f"{class_names[1]}_probability", pa.float64()), ("confidence", pa.float64()),
                      ("model_version", pa.int64()), ("run_id", pa.string()), ("scored_at", pa.string())])


def encode_rows(rows: list[dict], fmt: str, class_names) -> bytes:
    """One predictions file: JSON lines, CSV with a header row, or Parquet with an explicit schema."""
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=row_fields(class_names), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema(class_names)), buffer)
    return buffer.getvalue()


def folder_label_key(path: str, predicted_class: str, class_names) -> str | None:
    """When the file's folder names a class (`cat/`, `Dogs/`), whether the prediction agrees: scoring a labelled
    folder reports its accuracy for free."""
    label = features.label_for_name(os.path.basename(os.path.dirname(path)), class_names)
    if label is None:
        return None
    return "folder_label:" + ("agrees" if class_names[label] == predicted_class else "differs")


class CommitBatchFn(beam.DoFn):
    """BatchOutcome -> its predictions and errors files plus a commit marker in the staging dir, then the batch's
    tally: {"counts": {...}, "recent": [keys], "retry": [paths], "files": [names]}.

    The marker (written last) records the batch's outcome counts, the files it wrote, and the path hashes of every
    file it accounted for, which is what a resumed run skips. A batch retried by the runner rewrites the same files.
    """

    def __init__(self, staging: str, fmt: str, model_info: dict, run_id: str, new_watermark: float):
        self._staging = staging
        self._format = fmt
        self._class_names = tuple(model_info["class_names"])
        self._threshold = float(model_info.get("threshold", 0.5))
        version = str(model_info["model_version"])
        self._model_version = int(version) if version.isdigit() else version
        self._run_id = run_id
        self._new_watermark = new_watermark

    def setup(self):
        self._done = self._last_log = 0
        self._started = self._last_time = time.monotonic()

    def process(self, outcome: inference.BatchOutcome):
        batch, names = outcome.batch, self._class_names
        counts, recent, retry, rows, errors = Counter(), list(outcome.batch.notes.get("recent", ())), [], [], []
        for ref, probability in outcome.scored:
            row = prediction_row(ref.path, probability, names, self._threshold, self._model_version, self._run_id,
                                 outcome.scored_at)
            rows.append(row)
            counts["scored"] += 1
            counts["class:" + row["predicted_class"]] += 1
            counts[f"hist:{min(int(row[f'{names[1]}_probability'] * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)}"] += 1
            agreement = folder_label_key(ref.path, row["predicted_class"], names)
            if agreement:
                counts[agreement] += 1
            if ref.mtime >= self._new_watermark:
                recent.append(incremental.record_key(ref))
        for ref, reason, detail in outcome.rejected:
            errors.append({"path": storage.display_path(ref.path), "reason": reason, "detail": detail})
            counts["failed:" + reason] += 1
            if reason in incremental.TRANSIENT_REASONS:
                retry.append(storage.display_path(ref.path))  # JSON-safe: a name that is not UTF-8 is escaped
            elif ref.mtime >= self._new_watermark:
                recent.append(incremental.record_key(ref))
        files = []
        if rows:
            files.append(f"predictions-{batch.batch_id}.{self._format}")
            storage.write_bytes(storage.join(self._staging, files[-1]), encode_rows(rows, self._format, names))
        if errors:
            files.append(f"errors-{batch.batch_id}.jsonl")
            storage.write_bytes(storage.join(self._staging, files[-1]),
                                "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode("utf-8"))
        if files:
            done = [incremental.path_hash(ref.path) for ref, _ in outcome.scored]
            done += [incremental.path_hash(ref.path) for ref, _, _ in outcome.rejected]
            storage.write_json(storage.join(self._staging, COMMITTED, f"{batch.batch_id}.{len(done)}.json"),
                               {"batch": batch.batch_id, "counts": dict(counts), "files": files,
                                "done": incremental.pack(done),
                                "recent": incremental.pack(recent), "retry": retry})
        self._count(len(batch))
        for name, value in counts.items():
            beam.metrics.Metrics.counter(NAMESPACE, name.replace(":", "_")).inc(value)
        yield {"counts": dict(counts + Counter(batch.counts)), "recent": recent, "retry": retry, "files": files,
               "times": [outcome.started, outcome.finished] if len(batch) else []}

    def _count(self, files: int) -> None:
        self._done += files
        now = time.monotonic()
        if now - self._last_time >= lifecycle.PROGRESS_SECONDS:
            rate = (self._done - self._last_log) / (now - self._last_time)
            _LOGGER.info("scoring worker pid %d: %d files done, %.1f files/s over the last %.0f s", os.getpid(),
                         self._done, rate, now - self._last_time)
            self._last_log, self._last_time = self._done, now
