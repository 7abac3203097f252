"""Files on local disk and `gs://` alike: paths, read, write, JSON, sha256, copy, compare-and-swap. Every job's file
I/O goes through here (listing folders: beam_pipelines/file_listing.py). Standard library + google-cloud-storage.

Why not Beam's FileSystems or tf.io.gfile: Beam's GCS reads have no byte cap and its listing keeps a set of every name;
TensorFlow's gs:// ignores generation preconditions, so neither gives compare-and-swap. What each operation promises:

- `read_bytes(path, limit)` refuses a file over `limit` bytes without reading it whole; on GCS transient errors
  (429, 5xx, dropped connections) are retried with backoff for up to RETRY_SECONDS by the client's own retry policy.
- `write_bytes` is atomic locally (a temporary file, then rename): a reader never sees half a file. A GCS object
  appears whole or not at all anyway.
- `read_versioned` / `write_if_generation` give compare-and-swap on one small object (a pointer, a lease, the
  incremental scoring state): on GCS through generation preconditions, locally under an exclusive file lock.

google-cloud-storage is imported only when a gs:// path is used; each thread gets its own client.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading

GCS_PREFIX = "gs://"
RETRY_SECONDS = 60.0  # a GCS read retried for longer than this is the file's problem (read_error), not the job's
_local = threading.local()


class FileTooLarge(OSError):
    """A file over the byte cap; raised before reading it whole."""


def is_remote(path: str) -> bool:
    return path.startswith(GCS_PREFIX)


def join(base: str, *parts: str) -> str:
    """base/part/...: '/' separated on GCS and locally (POSIX paths only)."""
    path = base
    for part in parts:
        path = path.rstrip("/") + "/" + part.lstrip("/")
    return path


def absolute(path: str) -> str:
    """Local paths made absolute (keeping a trailing '/'); gs:// paths unchanged."""
    if is_remote(path):
        return path
    return os.path.abspath(path) + ("/" if path.endswith("/") and path != "/" else "")


def display_path(path: str) -> str:
    """The path as valid UTF-8 text for outputs: a local name that is not valid UTF-8 (held by Python as surrogate
    escapes) shows its undecodable bytes as backslash escapes, e.g. `caf\\xe9.jpg`."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_key(path: str) -> bytes:
    """Bytes that identify a path, for hashing: also defined for local names that are not valid UTF-8."""
    return os.fsencode(path) if not is_remote(path) else path.encode("utf-8")


# ---- GCS plumbing -------------------------------------------------------------------------------------------------

def split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_PREFIX):].partition("/")
    return bucket, name


def gcs_client():
    """This thread's google-cloud-storage client (clients share an HTTP session, which is not thread-safe)."""
    client = getattr(_local, "client", None)
    if client is None:
        from google.cloud import storage

        client = _local.client = storage.Client()
    return client


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def retry_policy():
    """google-cloud-storage's own retry policy (429, 5xx, dropped connections) for up to RETRY_SECONDS."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_SECONDS)


def _not_found():
    from google.api_core import exceptions

    return exceptions.NotFound


def _precondition_failed():
    from google.api_core import exceptions

    return exceptions.PreconditionFailed


# ---- reading and writing ------------------------------------------------------------------------------------------

def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    return _blob(path).exists(retry=retry_policy())


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The file's bytes. Raises FileTooLarge when it holds more than `limit` bytes (checked before reading it
    whole), FileNotFoundError when it is gone, OSError (or a GCS error after RETRY_SECONDS of retries) otherwise."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    else:
        blob = _blob(path)
        try:
            if limit is None:
                data = blob.download_as_bytes(retry=retry_policy())
            else:  # a range read: a file that grew since it was listed still costs at most limit + 1 bytes
                data = blob.download_as_bytes(start=0, end=limit, retry=retry_policy())
        except _not_found() as error:
            raise FileNotFoundError(f"{path}: {error}") from None
    if limit is not None and len(data) > limit:
        raise FileTooLarge(f"more than {limit:,} bytes")
    return data


def read_range(path: str, start: int, length: int) -> bytes:
    """`length` bytes of a file from byte `start` (one ranged request on GCS)."""
    if length <= 0:
        return b""
    if is_remote(path):
        return _blob(path).download_as_bytes(start=start, end=start + length - 1, retry=retry_policy())
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(length)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file. Locally through a temporary file and a rename, so readers never see part of it."""
    if is_remote(path):
        _blob(path).upload_from_string(data, retry=retry_policy())
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{threading.get_ident()}-{os.path.basename(path)}")
    try:
        # os.open with 0o666 lets the umask decide the mode, as open() would (mkstemp would make it private).
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


def to_json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(path: str, value) -> None:
    write_bytes(path, to_json_bytes(value))


@contextlib.contextmanager
def _open_for_reading(path: str):
    """A binary file object, local or gs:// (streamed); FileNotFoundError when it does not exist."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            yield handle
        return
    try:
        with _blob(path).open("rb", retry=retry_policy()) as handle:
            yield handle
    except _not_found() as error:
        raise FileNotFoundError(f"{path}: {error}") from None


def sha256(path: str) -> str:
    """sha256 of a file's content, streamed; FileNotFoundError when it does not exist."""
    digest = hashlib.sha256()
    with _open_for_reading(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def delete(path: str) -> None:
    """Removes one file; missing is fine."""
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with contextlib.suppress(_not_found()):
        _blob(path).delete(retry=retry_policy())


def delete_tree(path: str) -> None:
    """Removes a folder (local) or every object under a prefix (gs://); missing is fine."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    bucket, name = split_gcs(path.rstrip("/") + "/")
    for blob in gcs_client().list_blobs(bucket, prefix=name, retry=retry_policy(), fields="items(name),nextPageToken"):
        delete(f"{GCS_PREFIX}{bucket}/{blob.name}")


def download(source: str, local_path: str) -> None:
    """Copies one file (local or gs://) to a local path, streamed: model variables can be gigabytes."""
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    if is_remote(source):
        try:
            _blob(source).download_to_filename(local_path, retry=retry_policy())
        except _not_found() as error:
            raise FileNotFoundError(f"{source}: {error}") from None
    else:
        shutil.copyfile(source, local_path)


def copy(source: str, destination: str) -> None:
    """Copies one file; on GCS a server-side copy (no bytes through this process)."""
    if is_remote(source) and is_remote(destination):
        bucket, name = split_gcs(destination)
        client = gcs_client()
        client.bucket(split_gcs(source)[0]).copy_blob(_blob(source), client.bucket(bucket), name, retry=retry_policy())
    else:
        write_bytes(destination, read_bytes(source))


# ---- compare-and-swap on one small object -------------------------------------------------------------------------

@contextlib.contextmanager
def _local_lock(path: str):
    """An exclusive lock on the file's folder (flock on the directory itself: no lock files left behind)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _generation_of(info: os.stat_result) -> int:
    return info.st_mtime_ns ^ (info.st_ino << 1) or 1  # changes on every replace (new inode); 0 means "absent"


def _local_generation(path: str) -> int:
    try:
        return _generation_of(os.stat(path))
    except FileNotFoundError:
        return 0


def read_versioned(path: str) -> tuple[bytes | None, int]:
    """(content, generation) of a small object; (None, 0) when absent. Pass the generation to write_if_generation."""
    if not is_remote(path):
        try:
            with open(path, "rb") as handle:  # writers replace the file whole: the open one is one version
                return handle.read(), _generation_of(os.fstat(handle.fileno()))
        except FileNotFoundError:
            return None, 0
    bucket, name = split_gcs(path)
    blob = gcs_client().bucket(bucket).get_blob(name, retry=retry_policy())
    if blob is None:
        return None, 0
    if not blob.generation:  # gcp-storage-emulator sends none (it ignores preconditions too); real GCS always does
        return blob.download_as_bytes(retry=retry_policy()), 1
    generation = int(blob.generation)  # before the download, which resets it from the response's headers
    try:
        return blob.download_as_bytes(if_generation_match=generation, retry=retry_policy()), generation
    except (_not_found(), _precondition_failed()):
        return read_versioned(path)  # replaced or removed between the two requests: read again


def write_if_generation(path: str, data: bytes, generation: int) -> bool:
    """Writes data only if the object is still at `generation` (0: only if it does not exist). True when written;
    False when another writer got there first (read again and decide again)."""
    if not is_remote(path):
        with _local_lock(path):
            if _local_generation(path) != generation:
                return False
            write_bytes(path, data)
            return True
    try:
        _blob(path).upload_from_string(data, if_generation_match=generation or 0, retry=retry_policy())
        return True
    except _precondition_failed():
        return False


def delete_if_generation(path: str, generation: int) -> bool:
    """Deletes the object only if it is still at `generation`."""
    if not is_remote(path):
        with _local_lock(path):
            if _local_generation(path) != generation:
                return False
            delete(path)
            return True
    try:
        _blob(path).delete(if_generation_match=generation, retry=retry_policy())
        return True
    except (_precondition_failed(), _not_found()):
        return False
