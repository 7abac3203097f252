"""Publish a finished model export and move the `latest` pointer, safely when writers race.

Layout of an export root (local or gs://):

    <root>/<version>/saved_model.pb, variables/, model_info.json   # one immutable directory per version
    <root>/latest                                                   # text: the newest published version

A version becomes visible only when complete: locally it is renamed into place; on GCS every object
is created with `if_generation_match=0` (never overwriting) and `model_info.json`, which readers
require, goes last. `latest` only moves forward, by compare-and-swap: on GCS a write conditioned on
the generation that was read (HTTP 412 when another writer got there first, then re-read and retry),
locally a rename under an exclusive file lock. Standard library and google-cloud-storage only.
"""

import fcntl
import os
import shutil
import tempfile

LATEST = "latest"
MODEL_INFO = "model_info.json"


class PublishError(RuntimeError):
    pass


def _is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def _bucket_and_name(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name


def gcs_client():
    from google.cloud import storage  # imported lazily: local-only runs never need it

    return storage.Client()


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def publish_export(local_dir: str, export_root: str, version: str) -> str:
    """Copies a complete export from local_dir to <export_root>/<version>, then points `latest` at it
    unless a newer version is already there. Returns the published URI."""
    if not os.path.isfile(os.path.join(local_dir, MODEL_INFO)):
        raise PublishError(f"{local_dir} has no {MODEL_INFO}: refusing to publish an incomplete export")
    if _is_gcs(export_root):
        target = _upload(local_dir, export_root.rstrip("/") + "/" + version)
    else:
        target = os.path.join(export_root, version)
        if os.path.exists(target):
            raise PublishError(f"{target} already exists: published versions are immutable")
        os.makedirs(export_root, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_root)
        shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        os.rename(staging, target)
    advance_latest(export_root, version)
    return target


def _upload(local_dir: str, target: str) -> str:
    from google.api_core import exceptions

    bucket_name, prefix = _bucket_and_name(target)
    bucket = gcs_client().bucket(bucket_name)
    files = []
    for root, _, names in os.walk(local_dir):
        files += [os.path.join(root, name) for name in names]
    files.sort(key=lambda path: os.path.basename(path) == MODEL_INFO)  # the completion marker goes last
    for path in files:
        relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
        blob = bucket.blob(f"{prefix}/{relative}")
        try:
            blob.upload_from_filename(path, if_generation_match=0)
        except exceptions.PreconditionFailed:
            if _same_content(blob, path):  # our own earlier attempt succeeded but its answer was lost
                continue
            raise PublishError(f"gs://{bucket_name}/{blob.name} exists with other content: "
                               f"published versions are immutable") from None
    return target


def _same_content(blob, path: str) -> bool:
    import base64

    import google_crc32c

    blob.reload()
    with open(path, "rb") as handle:
        local = google_crc32c.Checksum(handle.read()).digest()
    return blob.crc32c == base64.b64encode(local).decode()


def read_latest(export_root: str) -> str | None:
    """The version `latest` names, or None when nothing was published yet."""
    if _is_gcs(export_root):
        version, _ = _read_latest_gcs(export_root)
        return version
    try:
        with open(os.path.join(export_root, LATEST)) as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def _read_latest_gcs(export_root: str):
    from google.api_core import exceptions

    bucket_name, prefix = _bucket_and_name(export_root.rstrip("/") + "/" + LATEST)
    blob = gcs_client().bucket(bucket_name).blob(prefix)
    try:
        content = blob.download_as_bytes()
    except exceptions.NotFound:
        return None, 0
    return content.decode().strip() or None, blob.generation


def advance_latest(export_root: str, version: str, attempts: int = 20) -> str:
    """Points `latest` at version unless it already names a newer one. Returns what `latest` names."""
    if not _is_gcs(export_root):
        with open(os.path.join(export_root, ".latest.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = read_latest(export_root)
            if current is not None and _version_key(current) >= _version_key(version):
                return current
            staging = os.path.join(export_root, f".{LATEST}.{os.getpid()}")
            with open(staging, "w") as handle:
                handle.write(version + "\n")
            os.replace(staging, os.path.join(export_root, LATEST))
            return version
    from google.api_core import exceptions

    bucket_name, name = _bucket_and_name(export_root.rstrip("/") + "/" + LATEST)
    for _ in range(attempts):
        current, generation = _read_latest_gcs(export_root)
        if current is not None and _version_key(current) >= _version_key(version):
            return current
        blob = gcs_client().bucket(bucket_name).blob(name)
        try:
            blob.upload_from_string(version + "\n", if_generation_match=generation)
            return version
        except exceptions.PreconditionFailed:
            continue  # another publisher moved it between our read and write: read again
    raise PublishError(f"could not update {export_root}/{LATEST} after {attempts} attempts")


def resolve_model(uri: str, exists=os.path.exists) -> str:
    """A version directory as given, or the version a root's `latest` names."""
    uri = uri.rstrip("/")
    if exists(f"{uri}/saved_model.pb"):
        return uri
    version = read_latest(uri)
    if version is None:
        raise PublishError(f"{uri} is neither a model export (no saved_model.pb) nor an export root with a "
                           f"'{LATEST}' file; pass MODEL=<model_dir>/export or MODEL=<model_dir>/export/<version>")
    return f"{uri}/{version}"
