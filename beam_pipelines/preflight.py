"""Checks both Beam jobs run before they build a pipeline: every gs:// path reachable within 15 s
(trainer/credentials.py, shared with the trainer), and --check_only.

`--check_only` (`run_checks`) validates everything a run would need and writes nothing: the flags (already parsed by
then), the credentials, the inputs (counted, a few decoded), write access to the output (without writing: IAM's
testPermissions on GCS, os.access locally) and, for scoring, the model (already verified at launch).
"""

import logging
import os

from beam_pipelines import cli, file_listing, imaging, reading
from trainer import credentials, storage

SAMPLE_FILES = 5

_LOG = logging.getLogger(__name__)


def require_reachable(paths) -> None:
    """credentials.check_reachable, as a usage error (exit 2): what both launchers run before anything reads from
    GCS."""
    try:
        credentials.check_reachable(paths)
    except credentials.Unreachable as error:
        raise cli.UsageError(str(error)) from None


def require_inputs(patterns) -> None:
    """UsageError (exit 2) at launch when an --input matches no file."""
    missing = file_listing.first_unmatched(patterns)
    if missing is not None:
        raise cli.UsageError(f"no files found at {missing!r}; check the path (folders are read recursively, globs "
                             f"like 'images/*/*.jpg' and gs://bucket/prefix/ work too)")


def writable(path: str) -> str | None:
    """None when this process may create files under path, else why not; writes nothing."""
    if storage.is_remote(path):
        bucket, _ = storage.split_gcs(path)
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
        for ref in file_listing.list_files(pattern):
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


def require_ok(report: dict) -> None:
    """After the report is printed: exit 2 when the run it checked could not write its output."""
    if report["output_writable"] != "yes":
        raise cli.UsageError(f"--check_only: the output is not writable: {report['output_writable']}")
