"""Files on local disk and `gs://` alike: list, read, write, compare-and-swap. Standard library + google-cloud-storage.

Every job goes through here for its files (Beam's FileSystems is not used: its GCS listing keeps a set of every
name it lists, and its reads have no byte cap). What each operation promises:

- `list_files(pattern)` streams `FileRef`s lazily: GCS one page (1,000 names) at a time, local folders one directory
  entry at a time (os.scandir, unsorted), so nothing holds the list of every file. Local symlinks to folders are
  followed once (a loop is reported, not walked again); broken links, FIFOs, sockets and devices come out as refs with
  a `problem` instead of vanishing, so the jobs can account for them.
- `read_bytes(path, limit)` refuses a file over `limit` bytes without reading it whole; on GCS transient errors
  (429, 5xx, dropped connections) are retried with backoff for up to RETRY_SECONDS by the client's own retry policy.
- `write_bytes` is atomic locally (a temporary file, then rename): a reader never sees half a file. A GCS object
  appears whole or not at all anyway.
- `read_versioned` / `write_if_generation` give compare-and-swap on one small object (a pointer, a lease, the
  incremental scoring state): on GCS through generation preconditions, locally under an exclusive file lock.

google-cloud-storage is imported only when a gs:// path is used; each thread gets its own client.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Iterator
from typing import NamedTuple

GCS_PREFIX = "gs://"
RETRY_SECONDS = 60.0  # a GCS read retried for longer than this is the file's problem (read_error), not the job's
LIST_PAGE_SIZE = 1000

# Why a listed entry cannot be read as a file (FileRef.problem); also dead-letter reasons in both jobs.
BROKEN_SYMLINK = "broken_symlink"
SYMLINK_LOOP = "folder_listed_twice"  # a link to a folder already walked (a loop, or the same folder twice)
NOT_A_FILE = "not_a_regular_file"
UNREADABLE_FOLDER = "unreadable_folder"
LISTING_PROBLEMS = (BROKEN_SYMLINK, SYMLINK_LOOP, NOT_A_FILE, UNREADABLE_FOLDER)

_WILDCARD = re.compile(r"[*?\[]")
_local = threading.local()


class FileRef(NamedTuple):
    """One listed entry. `mtime` is when the file appeared or last changed at this path (seconds since the epoch):
    locally the latest of the entry's and its target's change and modification times (a new hard link or rename
    counts as new), on GCS the object's `updated` time. `version` changes when the content may have changed: the
    target's modification time in nanoseconds locally (a new hard link or a rename leaves it alone), the object's
    generation on GCS. `problem` is None for a readable file, else why it cannot be read (LISTING_PROBLEMS)."""

    path: str
    size: int
    mtime: float
    version: int = 0
    problem: str | None = None


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

def _split_gcs(uri: str) -> tuple[str, str]:
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
    bucket, name = _split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def _retry():
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
    return _blob(path).exists(retry=_retry())


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
                data = blob.download_as_bytes(retry=_retry())
            else:  # a range read: a file that grew since it was listed still costs at most limit + 1 bytes
                data = blob.download_as_bytes(start=0, end=limit, retry=_retry())
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
        return _blob(path).download_as_bytes(start=start, end=start + length - 1, retry=_retry())
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(length)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file. Locally through a temporary file and a rename, so readers never see part of it."""
    if is_remote(path):
        _blob(path).upload_from_string(data, retry=_retry())
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


def sha256(path: str) -> str:
    """sha256 of a file's content, streamed."""
    digest = hashlib.sha256()
    if is_remote(path):
        with _blob(path).open("rb", retry=_retry()) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        with open(path, "rb") as handle:
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
        _blob(path).delete(retry=_retry())


def delete_tree(path: str) -> None:
    """Removes a folder (local) or every object under a prefix (gs://); missing is fine."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    for ref in list_files(path.rstrip("/") + "/"):
        delete(ref.path)


def download(source: str, local_path: str) -> None:
    """Copies one file (local or gs://) to a local path, streamed: model variables can be gigabytes."""
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    if is_remote(source):
        try:
            _blob(source).download_to_filename(local_path, retry=_retry())
        except _not_found() as error:
            raise FileNotFoundError(f"{source}: {error}") from None
    else:
        shutil.copyfile(source, local_path)


def copy(source: str, destination: str) -> None:
    """Copies one file; on GCS a server-side copy (no bytes through this process)."""
    if is_remote(source) and is_remote(destination):
        bucket, name = _split_gcs(destination)
        client = gcs_client()
        client.bucket(_split_gcs(source)[0]).copy_blob(_blob(source), client.bucket(bucket), name, retry=_retry())
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
    bucket, name = _split_gcs(path)
    blob = gcs_client().bucket(bucket).get_blob(name, retry=_retry())
    if blob is None:
        return None, 0
    if not blob.generation:  # gcp-storage-emulator sends none (it ignores preconditions too); real GCS always does
        return blob.download_as_bytes(retry=_retry()), 1
    generation = int(blob.generation)  # before the download, which resets it from the response's headers
    try:
        return blob.download_as_bytes(if_generation_match=generation, retry=_retry()), generation
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
        _blob(path).upload_from_string(data, if_generation_match=generation or 0, retry=_retry())
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
        _blob(path).delete(if_generation_match=generation, retry=_retry())
        return True
    except (_precondition_failed(), _not_found()):
        return False


# ---- listing ------------------------------------------------------------------------------------------------------

def translate_pattern(pattern: str) -> re.Pattern:
    """A glob (`*` within a folder, `**` across folders, `?`, `[...]`) as a regex over whole paths."""
    from apache_beam.io.filesystem import FileSystem  # the same glob dialect as Beam's own match

    return re.compile(FileSystem.translate_pattern(pattern))


def _split_pattern(pattern: str) -> tuple[str, re.Pattern | None]:
    """(folder or prefix to list, regex the full path must match or None) for a folder, file or glob."""
    match = _WILDCARD.search(pattern)
    if match is None:
        return pattern, None
    return pattern[: match.start()], translate_pattern(pattern)


class Matcher:
    """Whether a listed path belongs to a pattern: used to list each file once when --input patterns overlap."""

    def __init__(self, pattern: str):
        pattern = absolute(pattern)
        self._prefix, self._regex = _split_pattern(pattern)
        self._folder = self._prefix.rstrip("/") + "/"

    def __call__(self, path: str) -> bool:
        if self._regex is not None:
            return bool(self._regex.match(path))
        return path == self._prefix or path.startswith(self._folder)


def list_files(pattern: str) -> Iterator[FileRef]:
    """Every file under a folder (recursively), the file itself, or every file matching a glob, lazily and in no set
    order. Local paths come out absolute."""
    pattern = absolute(pattern)
    prefix, regex = _split_pattern(pattern)
    raw_prefix = regex is not None
    listing = (_list_gcs(prefix, raw_prefix) if is_remote(prefix)
               else _list_local(prefix, descend=True, raw_prefix=raw_prefix))
    for ref in listing:
        if regex is None or regex.match(ref.path):
            yield ref


def _list_gcs(prefix: str, raw_prefix: bool) -> Iterator[FileRef]:
    """Objects under a folder (or the one object named), or, for a glob's text before its wildcard (`raw_prefix`),
    every object whose name starts with it."""
    bucket, name = _split_gcs(prefix)
    if name and not name.endswith("/") and not raw_prefix:
        blob = gcs_client().bucket(bucket).get_blob(name, retry=_retry())
        if blob is not None:  # a single object named exactly; else a folder given without its '/'
            yield FileRef(prefix, int(blob.size or 0), _timestamp(blob.updated), int(blob.generation or 0))
            return
        name += "/"
    pages = gcs_client().list_blobs(bucket, prefix=name, page_size=LIST_PAGE_SIZE, retry=_retry(),
                                    fields="items(name,size,updated,generation),nextPageToken")
    for blob in pages:  # an HTTPIterator: fetches the next page only when this one is used up
        if not blob.name.endswith("/"):  # folder placeholder objects made by consoles
            yield FileRef(f"{GCS_PREFIX}{bucket}/{blob.name}", int(blob.size or 0), _timestamp(blob.updated),
                          int(blob.generation or 0))


def _timestamp(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _entry_ref(path: str, link: os.stat_result, target: os.stat_result | None) -> FileRef:
    if target is None:
        return FileRef(path, 0, link.st_ctime, 0, BROKEN_SYMLINK)
    changed = max(link.st_ctime, link.st_mtime, target.st_ctime, target.st_mtime)
    if not stat.S_ISREG(target.st_mode):
        return FileRef(path, 0, changed, 0, NOT_A_FILE)
    return FileRef(path, target.st_size, changed, target.st_mtime_ns)


def _list_local(prefix: str, descend: bool, raw_prefix: bool = False) -> Iterator[FileRef]:
    """A local file, or a folder walked depth-first with os.scandir; for a glob's text before its first wildcard
    (`raw_prefix`) that is neither (e.g. /data/cat_ of /data/cat_*.jpg), the folder it starts in. A path that does not
    exist lists nothing (not its parent folder)."""
    if not prefix.endswith("/") and os.path.lexists(prefix) and not os.path.isdir(prefix):
        link = os.lstat(prefix)
        try:
            target = os.stat(prefix)
        except OSError:
            target = None
        yield _entry_ref(prefix, link, target)
        return
    folder = (prefix if prefix.endswith("/") or os.path.isdir(prefix) or not raw_prefix
              else os.path.dirname(prefix) + "/")
    folder = folder.rstrip("/") or "/"
    try:
        root = os.stat(folder)
    except OSError:
        return
    visited = {(root.st_dev, root.st_ino)}  # folders seen, so a link back up is reported once, not walked forever
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except OSError:
            yield FileRef(current, 0, 0.0, 0, UNREADABLE_FOLDER)  # its files cannot be accounted one by one
            continue
        with entries:
            for entry in entries:
                path = entry.path
                try:
                    link = entry.stat(follow_symlinks=False)
                    try:
                        target = entry.stat(follow_symlinks=True) if entry.is_symlink() else link
                    except OSError:
                        target = None
                    if target is not None and stat.S_ISDIR(target.st_mode):
                        key = (target.st_dev, target.st_ino)
                        if key in visited:
                            yield FileRef(path, 0, link.st_ctime, 0, SYMLINK_LOOP)
                        elif descend:
                            visited.add(key)
                            stack.append(path)
                        continue
                    yield _entry_ref(path, link, target)
                except FileNotFoundError:  # removed between the directory read and its stat: not there to process
                    continue
                except OSError:  # e.g. a folder that can be read but not searched (mode 644): no entry can be looked
                    yield FileRef(current, 0, 0.0, 0, UNREADABLE_FOLDER)  # up; reported as one, not a failed job
                    break


def check_patterns_match(patterns) -> None:
    """Fails fast, at launch, when a pattern matches nothing: almost always a typo in a path."""
    for pattern in patterns:
        if next(list_files(pattern), None) is None:
            raise SystemExit(f"error: no files found at {pattern!r}; check the path (folders are read recursively, "
                             f"globs like 'images/*/*.jpg' and gs://bucket/prefix/ work too)")
