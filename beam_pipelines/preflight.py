"""Checks both Beam jobs run before they build a pipeline: every gs:// path reachable within 15 s, and --check_only.

A gs:// path with broken credentials used to look like a hung job: Google's auth libraries retry for about half a
minute, then "connect anonymously" and wait again. `check_reachable` asks each bucket for one object name, in a
thread, and fails after REACH_SECONDS with one message naming the three usual causes.

`--check_only` (`run_checks`) validates everything a run would need and writes nothing: the flags (already parsed by
then), the credentials, the inputs (counted, a few decoded), write access to the output (without writing: IAM's
testPermissions on GCS, os.access locally) and, for scoring, the model (already verified at launch).
"""

import logging
import os
import threading

from beam_pipelines import imaging, reading, storage

REACH_SECONDS = 15.0
SAMPLE_FILES = 5

_LOG = logging.getLogger(__name__)


class Unreachable(RuntimeError):
    """A gs:// path that cannot be read with the credentials this process has; the message says what to check."""


def _advice(bucket: str, what: str) -> str:
    return (f"cannot reach gs://{bucket} ({what}). Check the credentials this process has: Application Default "
            f"Credentials (gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS naming a key "
            f"file), Workload Identity on GKE (the pod's Kubernetes service account must be bound to a Google service "
            f"account with access to the bucket), or STORAGE_EMULATOR_HOST when testing against an emulator")


def check_reachable(paths, seconds: float | None = None) -> None:
    """Raises Unreachable unless every bucket the gs:// paths name answers a one-object listing within `seconds`
    (default REACH_SECONDS)."""
    seconds = REACH_SECONDS if seconds is None else seconds
    buckets = {}
    for path in paths:
        if path and storage.is_remote(path):
            bucket, _, name = path[len(storage.GCS_PREFIX):].partition("/")
            buckets.setdefault(bucket, name.split("*")[0])
    for bucket, prefix in sorted(buckets.items()):
        outcome = {}

        def probe(bucket=bucket, prefix=prefix, outcome=outcome):
            try:
                # Transient errors (429, 503, a dropped connection) are retried within the same deadline: only a
                # bucket that stays out of reach fails the launch, not one busy moment of GCS.
                list(storage.gcs_client().list_blobs(bucket, prefix=prefix, max_results=1,
                                                     retry=storage._retry(seconds)))
                outcome["ok"] = True
            except Exception as error:  # noqa: BLE001 - any failure here is reported as unreachable
                outcome["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"

        thread = threading.Thread(target=probe, name=f"reach-{bucket}", daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            raise Unreachable(_advice(bucket, f"no answer within {seconds:g} s"))
        if "error" in outcome:
            raise Unreachable(_advice(bucket, outcome["error"]))


def writable(path: str) -> str | None:
    """None when this process may create files under path, else why not; writes nothing."""
    if storage.is_remote(path):
        bucket, _, _ = path[len(storage.GCS_PREFIX):].partition("/")
        try:
            granted = storage.gcs_client().bucket(bucket).test_iam_permissions(["storage.objects.create"])
        except Exception as error:  # noqa: BLE001 - reported, not raised: --check_only lists every problem
            return f"could not check permissions on gs://{bucket}: {type(error).__name__}: {error}"
        return None if "storage.objects.create" in granted else f"no storage.objects.create on gs://{bucket}"
    folder = path
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder.rstrip("/"))
    if not folder or not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create files in {folder or path}"
    return None


def run_checks(inputs, output_dir: str, size, max_pixels: int, max_bytes: int, extra: dict | None = None) -> dict:
    """Counts the input files, decodes the first few, checks the output is writable; returns a report (and logs
    it). `extra` (e.g. the model that was verified) is added to the report."""
    files, problems = 0, {}
    sample = []
    for pattern in inputs:
        for ref in storage.list_files(pattern):
            files += 1
            if ref.problem:
                problems[ref.problem] = problems.get(ref.problem, 0) + 1
            elif len(sample) < SAMPLE_FILES:
                sample.append(ref)
    decoded = {}
    for ref in sample:
        try:
            data = storage.read_bytes(ref.path, limit=max_bytes)
            image = imaging.decode_image(data, tuple(size), max_pixels)
            decoded[storage.display_path(ref.path)] = f"ok: {image.source_format} {image.source_size[0]}x" \
                                                      f"{image.source_size[1]}"
        except imaging.ImageRejected as rejected:
            decoded[storage.display_path(ref.path)] = f"rejected: {rejected.reason}: {rejected.detail}"
        except storage.FileTooLarge:
            decoded[storage.display_path(ref.path)] = f"rejected: {reading.FILE_TOO_LARGE}"
        except OSError as error:
            decoded[storage.display_path(ref.path)] = f"rejected: {reading.READ_ERROR}: {error}"
    report = {"check_only": True, "inputs": list(inputs), "files": files, "listing_problems": problems,
              "sample_decoded": decoded, "output_dir": output_dir, "output_writable": writable(output_dir) or "yes",
              **(extra or {})}
    for key, value in report.items():
        _LOG.info("check_only: %s: %s", key, value)
    return report
