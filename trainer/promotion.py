"""The promotion gate: a new export becomes `latest` (what the scoring CronJob uses) only when it is blessed.

Called once, at the end of trainer/train.py, after the test-split evaluation. The export is staged, then it and the
model `latest` names today (the baseline) are scored on the same test split by the same code: `tf.saved_model.load`
and the `serve_pixels` signature, the path the scoring job takes. The candidate is blessed when

- its accuracy is at least --min_accuracy and its ROC AUC at least --min_roc_auc (a threshold of 0 turns its check
  off), and
- neither its accuracy nor its ROC AUC is below the baseline's by more than --max_regression.

The first model (nothing published yet) needs no baseline. A baseline with other class names cannot be compared and
fails the gate (a change of classes is a decision: --force_publish). A baseline that cannot be read, verified or
loaded is reported loudly and the candidate is judged on the thresholds alone: production is broken already, and a
model that meets them is the repair.

Blessed: published as a new version, and `latest` moves to it by compare-and-swap from the pointer the baseline was
read from, so a model published meanwhile is never replaced by one gated against an older one ("superseded").
Not blessed: published as a version all the same (kept for inspection, with the decision and reasons in its
model_info.json's `promotion`), `latest` unchanged. --force_publish moves `latest` whatever the gate says, and says
so on stderr. The decision, the thresholds and both sets of metrics go to the log and to metrics.json's `promotion`;
`promote` returns the trainer's exit code: 0 published, 4 (EXIT_NOT_BLESSED) not blessed or superseded.
"""

import dataclasses
import json
import shutil
import sys

from trainer import data, evaluate, export, model_contract, provenance, publish, storage

EXIT_NOT_BLESSED = 4
_COMPARED = (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"))


@dataclasses.dataclass(frozen=True)
class Gate:
    """The thresholds (defaults in trainer/config.py's TrainConfig, like every trainer flag)."""

    min_accuracy: float
    min_roc_auc: float
    max_regression: float
    force_publish: bool = False


@dataclasses.dataclass(frozen=True)
class Outcome:
    exit_code: int
    record: dict  # what metrics.json's `promotion` holds
    uri: str  # the published version directory


def log(message: str) -> None:
    print(f"catsdogs-train: promotion: {message}", flush=True)


def warn(message: str) -> None:
    print(f"catsdogs-train: promotion: WARNING: {message}", file=sys.stderr, flush=True)


def score_export(model_dir: str, *, data_dir: str, split: str, image_size, class_names, batch_size: int = 128) -> dict:
    """Test-split metrics of the SavedModel in model_dir (local), through its serve_pixels signature: the decoded
    records at the dataset's size, resized (as the training pipeline does) when the export takes another size."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    signature = loaded.signatures[model_contract.SIGNATURES["pixels"]]
    input_size = [int(v) for v in signature.structured_input_signature[1]["pixels"].shape[1:3]]
    dataset = data.make_dataset(data_dir, split, image_size=image_size, batch_size=batch_size, training=False,
                                resize_to=input_size)
    labels, probabilities = [], []
    for images, batch_labels in dataset:
        probabilities.append(signature(pixels=tf.cast(images, tf.uint8))["probability"].numpy())
        labels.append(batch_labels.numpy())
    labels = np.concatenate(labels) if labels else np.zeros(0)
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros(0)
    return evaluate.compute_metrics(labels, probabilities, class_names, threshold=model_contract.THRESHOLD)


def _summary(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("examples", "accuracy", "roc_auc", "log_loss", "precision", "recall")}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(candidate: dict, baseline: dict | None, gate: Gate) -> list[dict]:
    """Every check the candidate's metrics go through, each {"check", "value", "limit", "passed"}; baseline is
    {"metrics": ...} when there is a usable one, {"problem": ...} when it cannot be compared, or None."""
    checks = []
    if not candidate.get("examples"):
        checks.append({"check": "a test split to judge on", "value": 0, "limit": 1, "passed": False})
    for key, name in _COMPARED:
        minimum = gate.min_accuracy if key == "accuracy" else gate.min_roc_auc
        if minimum > 0:
            value = candidate.get(key)
            checks.append({"check": f"{name} >= min_{key}", "value": value, "limit": minimum,
                           "passed": value is not None and value >= minimum})
    if baseline and "problem" in baseline and baseline.get("comparable") is False:
        checks.append({"check": "comparable with the baseline", "value": baseline["problem"], "limit": None,
                       "passed": False})
    elif baseline and "metrics" in baseline:
        for key, name in _COMPARED:
            before, value = baseline["metrics"].get(key), candidate.get(key)
            if before is None:
                continue
            limit = before - gate.max_regression
            checks.append({"check": f"{name} >= baseline {name} - max_regression", "value": value,
                           "limit": round(limit, 6), "passed": value is not None and value >= limit})
    return checks


def _reasons(checks: list[dict]) -> list[str]:
    return [f"{c['check']}: {c['value'] if isinstance(c['value'], str) else _fmt(c['value'])} "
            f"(needs {_fmt(c['limit'])})" if c["limit"] is not None else f"{c['check']}: {c['value']}"
            for c in checks if not c["passed"]]


def read_baseline(export_root: str, *, data_dir: str, split: str, image_size, class_names) -> tuple:
    """(the pointer `latest` holds, None, or publish.DAMAGED; baseline dict or None): the baseline scored on the
    split, or why not."""
    try:
        pointer = publish.read_latest(export_root)
    except publish.PublishError as error:  # latest cannot move until it is repaired: fail the gate, say how
        return publish.DAMAGED, {"version": None, "comparable": False, "problem": str(error)}
    if pointer is None:
        return None, None
    baseline = {"version": pointer.version}
    local = None
    try:
        local, info, checksum = publish.fetch_version(export_root, pointer.version)
        if not pointer.legacy and checksum != pointer.model_info_sha256:
            raise publish.PublishError(f"its model_info.json has sha256 {checksum}, latest records "
                                       f"{pointer.model_info_sha256}")
        if list(info["class_names"]) != list(class_names):
            return pointer, {**baseline, "comparable": False,
                             "problem": f"the baseline predicts {info['class_names']}, this dataset has "
                                        f"{list(class_names)}"}
        baseline["model_name"] = info["model_name"]
        baseline["metrics"] = _summary(score_export(local, data_dir=data_dir, split=split, image_size=image_size,
                                                    class_names=class_names))
    except Exception as error:  # any failure to read, verify or run the baseline is reported, not fatal
        baseline["problem"] = f"{type(error).__name__}: {error}"[:2000]
    finally:
        if local and storage.is_remote(export_root):
            shutil.rmtree(local, ignore_errors=True)  # the temporary copy of a gs:// baseline
    return pointer, baseline


def promote(model, *, export_root: str, data_dir: str, split: str, image_size, class_names, model_name: str,
            metrics: dict, training_data: dict, gate: Gate, tta: str = "none") -> Outcome:
    """Stages the export, gates it against `latest`, publishes it (moving `latest` only when blessed or forced)
    and logs every step. Returns the exit code and the record for metrics.json."""
    staging = export.stage_export(model, class_names=class_names, input_size=image_size, tta=tta)
    try:
        candidate = _summary(score_export(staging, data_dir=data_dir, split=split, image_size=image_size,
                                          class_names=class_names))
        log(f"candidate on the {split} split ({candidate['examples']} images): accuracy {_fmt(candidate['accuracy'])}, "
            f"ROC AUC {_fmt(candidate['roc_auc'])}, log loss {_fmt(candidate['log_loss'])}")
        pointer, baseline = read_baseline(export_root, data_dir=data_dir, split=split, image_size=image_size,
                                          class_names=class_names)
        if baseline is None:
            log(f"no model published in {export_root} yet: the first model needs no baseline")
        elif "metrics" in baseline:
            log(f"baseline (latest: version {baseline['version']}) on the same split: accuracy "
                f"{_fmt(baseline['metrics']['accuracy'])}, ROC AUC {_fmt(baseline['metrics']['roc_auc'])}, "
                f"log loss {_fmt(baseline['metrics']['log_loss'])}")
        elif baseline.get("comparable") is False:
            warn(f"the baseline (version {baseline['version']}) cannot be compared: {baseline['problem']}")
        else:
            warn(f"the baseline (latest: version {baseline['version']}) could not be read or scored, so the "
                 f"candidate is judged on the thresholds alone: {baseline['problem']}")
        checks = decide(candidate, baseline, gate)
        for check in checks:
            log(f"{'pass' if check['passed'] else 'FAIL'}: {check['check']}: "
                f"{check['value'] if isinstance(check['value'], str) else _fmt(check['value'])}"
                + ("" if check["limit"] is None else f" (needs {_fmt(check['limit'])})"))
        reasons = _reasons(checks)
        blessed = not reasons
        decision = "blessed" if blessed else ("forced" if gate.force_publish else "not_blessed")
        thresholds = dataclasses.asdict(gate)
        promotion = {"blessed": blessed, "decision": decision, "reasons": reasons, "checks": checks,
                     "thresholds": thresholds, "split": split, "candidate": candidate, "baseline": baseline,
                     "decided_at": provenance.utc_now()}
        if gate.force_publish and not blessed:
            warn(f"--force_publish: publishing as latest although the gate refused it ({'; '.join(reasons)})")
        movable = pointer != publish.DAMAGED  # a damaged latest is repaired by hand (trainer.rollback), not here
        published = export.publish_staged(staging, export_root, model_name=model_name, class_names=class_names,
                                          input_size=image_size, metrics=metrics, training_data=training_data,
                                          promotion=promotion, move_latest=movable and (blessed or gate.force_publish),
                                          expected=pointer, tta=tta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _report(published, promotion, export_root, pointer)


def _report(published: publish.Published, promotion: dict, export_root: str, pointer) -> Outcome:
    record = {**promotion, "version": published.version, "export": published.uri, "published": False,
              "latest": pointer.version if isinstance(pointer, model_contract.Pointer) else None}
    before = publish.describe(pointer)
    if pointer == publish.DAMAGED:
        warn(f"{export_root}/latest cannot be read, so it was not moved; repair it with python -m trainer.rollback to "
             f"--export_dir {export_root} --version <a version you trust> (this one: {published.version}"
             f"{'' if promotion['blessed'] else ', with --allow_unblessed'})")
    if published.move is None:
        log(f"NOT BLESSED: {'; '.join(promotion['reasons'])}. Kept as {published.uri} (not latest); latest still "
            f"names {before}. To publish it anyway: python -m trainer.rollback to --export_dir {export_root} "
            f"--version {published.version} --allow_unblessed")
        return Outcome(EXIT_NOT_BLESSED, record, published.uri)
    move = published.move
    record["latest"] = move.latest.version if move.latest else None
    if not move.moved:
        record["decision"] = "superseded"
        warn(f"latest not moved: {move.reason}. Version {published.version} is kept at {published.uri}; it was "
             f"gated against {before}, not against what latest names now: train again to compare with it")
        return Outcome(EXIT_NOT_BLESSED, record, published.uri)
    record["published"] = True
    verb = "FORCED: published" if promotion["decision"] == "forced" else "BLESSED: published"
    log(f"{verb} version {published.version} as latest (was {before}): {published.uri}")
    return Outcome(0, record, published.uri)


def recorded_exit_code(metrics_path: str) -> int | None:
    """The exit code of a run whose metrics.json records its promotion (the run is finished: repeating it would
    train again for nothing), else None."""
    import tensorflow as tf

    if not tf.io.gfile.exists(metrics_path):
        return None
    with tf.io.gfile.GFile(metrics_path) as handle:
        recorded = json.loads(handle.read()).get("promotion")
    if not isinstance(recorded, dict):
        return None
    return 0 if recorded.get("published") else EXIT_NOT_BLESSED
