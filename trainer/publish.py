"""Publish a finished model export and move the `latest` pointer, safely when writers race.

Layout of an export root (local or gs://):

    <root>/<version>/saved_model.pb, variables/, model_info.json   # one immutable directory per version
    <root>/latest                                                   # text: the newest published version

A version becomes visible only when complete: locally it is renamed into place; on GCS every object
is created with `if_generation_match=0` (never overwriting) and `model_info.json`, which readers
require, goes last. Publishing is idempotent: a retry after an answer was lost (or after a crash between
copying the version and moving `latest`) finds its own identical version, keeps it and moves `latest`;
a version that exists with other content is refused before anything is written.

`latest` only moves forward, by compare-and-swap: on GCS a write conditioned on
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
        if not _already_published_locally(local_dir, target):
            os.makedirs(export_root, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_root)
            try:
                shutil.copytree(local_dir, staging, dirs_exist_ok=True)
                os.rename(staging, target)  # fails when a complete version appeared meanwhile: never merged
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    advance_latest(export_root, version)
    return target


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _already_published_locally(local_dir: str, target: str) -> bool:
    """True when target holds this very export (a retry); raises when it holds another one."""
    if not os.path.exists(target):
        return False
    published_info = os.path.join(target, MODEL_INFO)
    ours = _read_bytes(os.path.join(local_dir, MODEL_INFO))
    if os.path.isfile(published_info) and _read_bytes(published_info) == ours:
        return True  # model_info.json lists every file's sha256, so equal markers mean equal exports
    raise PublishError(f"{target} already exists with other content: published versions are immutable")


def _upload(local_dir: str, target: str) -> str:
    from google.api_core import exceptions

    bucket_name, prefix = _bucket_and_name(target)
    bucket = gcs_client().bucket(bucket_name)
    marker = bucket.blob(f"{prefix}/{MODEL_INFO}")
    if marker.exists():  # complete already: ours from an earlier attempt, or somebody else's version
        if _same_content(marker, os.path.join(local_dir, MODEL_INFO)):
            return target  # model_info.json lists every file's sha256: equal markers mean equal exports
        raise PublishError(f"{target} is already published with other content: published versions are "
                           f"immutable")
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
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):  # variables files can be gigabytes
            checksum.update(chunk)
    return blob.size == os.path.getsize(path) and blob.crc32c == base64.b64encode(checksum.digest()).decode()


def read_latest(export_root: str) -> str | None:
    """The version `latest` names, or None when nothing was published yet."""
    if _is_gcs(export_root):
        # A reader needs no generation (only advance_latest's conditional write does), and some servers
        # (gcp-storage-emulator) send none: read the content alone.
        from google.api_core import exceptions

        bucket_name, name = _bucket_and_name(export_root.rstrip("/") + "/" + LATEST)
        try:
            return gcs_client().bucket(bucket_name).blob(name).download_as_bytes().decode().strip() or None
        except exceptions.NotFound:
            return None
    try:
        with open(os.path.join(export_root, LATEST)) as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def _read_latest_gcs(export_root: str, client=None, attempts: int = 5):
    """(version or None, generation of `latest`; 0 when absent, which `if_generation_match` reads as
    "create only")."""
    from google.api_core import exceptions

    bucket_name, name = _bucket_and_name(export_root.rstrip("/") + "/" + LATEST)
    bucket = (client or gcs_client()).bucket(bucket_name)
    for _ in range(attempts):
        blob = bucket.blob(name)
        try:
            content = blob.download_as_bytes()  # content and generation come from the same response
            generation = blob.generation
            if not generation:
                # Some servers (gcp-storage-emulator) send no generation header with the content: take it
                # from the metadata, then re-read the content of exactly that generation.
                blob = bucket.get_blob(name)
                if blob is None:
                    return None, 0
                generation = blob.generation
                content = blob.download_as_bytes(if_generation_match=generation)
        except exceptions.NotFound:
            return None, 0
        except exceptions.PreconditionFailed:
            continue  # replaced between the two reads: read again
        if not generation:
            # Without it the conditional write in advance_latest would become an unconditional overwrite.
            raise PublishError(f"{export_root}/{LATEST}: the server reports no object generation")
        return content.decode().strip() or None, int(generation)
    raise PublishError(f"{export_root}/{LATEST} kept changing while being read ({attempts} attempts)")


def advance_latest(export_root: str, version: str, attempts: int = 20) -> str:
    """Points `latest` at version unless it already names a newer one. Returns what `latest` names."""
    if not _is_gcs(export_root):
        os.makedirs(export_root, exist_ok=True)
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

    client = gcs_client()
    bucket_name, name = _bucket_and_name(export_root.rstrip("/") + "/" + LATEST)
    for _ in range(attempts):
        current, generation = _read_latest_gcs(export_root, client)
        if current is not None and _version_key(current) >= _version_key(version):
            return current  # also the answer when our own earlier write succeeded but its reply was lost
        blob = client.bucket(bucket_name).blob(name)
        try:
            blob.upload_from_string(version + "\n", content_type="text/plain", if_generation_match=generation)
            return version
        except exceptions.PreconditionFailed:
            continue  # another publisher moved it between our read and write: read again
    raise PublishError(f"could not update {export_root}/{LATEST} after {attempts} attempts")


def _exists(path: str) -> bool:
    if not _is_gcs(path):
        return os.path.exists(path)
    bucket_name, name = _bucket_and_name(path)
    return gcs_client().bucket(bucket_name).blob(name).exists()


def resolve_model(uri: str, exists=None) -> str:
    """A version directory as given, or the version a root's `latest` names. `exists` defaults to a check
    that understands both local paths and gs:// (os.path.exists alone would miss every gs:// version)."""
    exists = exists or _exists
    uri = uri.rstrip("/")
    if exists(f"{uri}/saved_model.pb"):
        return uri
    version = read_latest(uri)
    if version is None:
        raise PublishError(f"{uri} is neither a model export (no saved_model.pb) nor an export root with a "
                           f"'{LATEST}' file; pass MODEL=<model_dir>/export or MODEL=<model_dir>/export/<version>")
    if not version.isdigit():  # export versions are integers; anything else could lead out of the root ("../x")
        raise PublishError(f"{uri}/{LATEST} names {version[:100]!r}, not a version (an integer directory name "
                           f"under {uri}); refusing to follow it. Publish the model again with trainer/export.py, "
                           f"or pass MODEL=<model_dir>/export/<version>")
    return f"{uri}/{version}"
