"""Publish an export as a new immutable version, move `latest` by compare-and-swap, and roll it back.

The layout and formats are trainer/model_contract.py's. A version becomes visible only when complete: locally it is
renamed into place; on GCS every object is created with `if_generation_match=0` (never overwriting) and
`model_info.json`, which readers require, goes last. Publishing is idempotent: a retry after an answer was lost (or
after a crash between copying the version and moving `latest`) finds its own identical version and keeps it; a
version that exists with other content raises VersionTaken before anything is written, and the caller picks the
next version (`next_version`: greater than every version already there, whatever the local clock says).

`latest` moves by compare-and-swap and the caller always learns the outcome (`LatestMove`): on GCS a write
conditioned on the generation that was read (HTTP 412 when another writer got there first, then re-read), locally
a rename under an exclusive file lock. `move_latest` either only moves forward (FORWARD) or only from the pointer
the caller saw (`expected`), so a trainer gated against one `latest` never replaces another that appeared meanwhile.

Reading a version back (`check_version`, `fetch_version`) verifies it against its model_info.json; the operator's
`python -m trainer.rollback` and the promotion gate use them. Standard library and google-cloud-storage only.
"""

import dataclasses
import fcntl
import os
import shutil
import tempfile
import threading
import time

from trainer import model_contract, storage
from trainer.model_contract import LATEST, MODEL_INFO, ModelError, Pointer

FORWARD = "forward"  # move_latest's default expectation: only to a version newer than the one `latest` names
DAMAGED = "damaged"  # the expectation that repairs an unreadable `latest` (and only an unreadable one)


class PublishError(RuntimeError):
    pass


class VersionTaken(PublishError):
    """The version directory exists with other content: published versions are immutable; choose another version."""


@dataclasses.dataclass(frozen=True)
class LatestMove:
    """The outcome of moving `latest`: whether it names the new version now, what it names, and why not."""

    moved: bool
    latest: Pointer | None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Published:
    uri: str  # the version directory
    version: str
    move: LatestMove


def _read(path: str) -> bytes | None:
    """A file's or object's bytes; None when it does not exist."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return None


def _sha256_of(path: str) -> str | None:
    try:
        return storage.sha256(path)  # streamed: variables files can be gigabytes
    except FileNotFoundError:
        return None


def list_versions(export_root: str) -> list[str]:
    """Every version directory under export_root, complete or not, oldest first."""
    if not storage.is_remote(export_root):
        names = os.listdir(export_root) if os.path.isdir(export_root) else []
    else:
        bucket_name, prefix = storage.split_gcs(model_contract.join(export_root, ""))
        blobs = storage.gcs_client().list_blobs(bucket_name, prefix=prefix, delimiter="/")
        names = []
        for page in blobs.pages:
            names += [p[len(prefix):].rstrip("/") for p in page.prefixes]
    return sorted((n for n in names if model_contract.is_version(n)), key=model_contract.version_key)


def next_version(export_root: str, now: float | None = None) -> str:
    """A version newer than every version under export_root and than `latest`, even when this clock is behind."""
    latest = read_latest(export_root)
    existing = list_versions(export_root) + ([latest.version] if latest else [])
    return model_contract.next_version(time.time() if now is None else now, existing)


# ---- versions ----------------------------------------------------------------------------------------------------

def publish_version(local_dir: str, export_root: str, version: str) -> str:
    """Copies a complete export from local_dir to <export_root>/<version>; returns that URI. Raises VersionTaken
    when the version exists with other content (nothing is overwritten)."""
    if not model_contract.is_version(version):
        raise PublishError(f"version {version!r} is not an integer: export versions are decimal integers")
    if not os.path.isfile(os.path.join(local_dir, MODEL_INFO)):
        raise PublishError(f"{local_dir} has no {MODEL_INFO}: refusing to publish an incomplete export")
    target = model_contract.join(export_root, version)
    if storage.is_remote(export_root):
        return _upload(local_dir, target)
    if _already_published_locally(local_dir, target):
        return target
    os.makedirs(export_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_root)
    try:
        shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        os.rename(staging, target)  # fails when the version appeared meanwhile: never merged into it
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _already_published_locally(local_dir, target):
            return target
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _already_published_locally(local_dir: str, target: str) -> bool:
    """True when target holds this very export (a retry); raises VersionTaken when it holds another one."""
    if not os.path.exists(target):
        return False
    if _read(os.path.join(target, MODEL_INFO)) == _read(os.path.join(local_dir, MODEL_INFO)):
        return True  # model_info.json lists every file's sha256, so equal markers mean equal exports
    raise VersionTaken(f"{target} already exists with other content: published versions are immutable")


def _upload(local_dir: str, target: str) -> str:
    from google.api_core import exceptions

    bucket_name, prefix = storage.split_gcs(target)
    bucket = storage.gcs_client().bucket(bucket_name)
    marker = bucket.blob(f"{prefix}/{MODEL_INFO}")
    if marker.exists():  # complete already: ours from an earlier attempt, or somebody else's version
        if _same_content(marker, os.path.join(local_dir, MODEL_INFO)):
            return target  # model_info.json lists every file's sha256: equal markers mean equal exports
        raise VersionTaken(f"{target} is already published with other content: published versions are immutable")
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
            raise VersionTaken(f"gs://{bucket_name}/{blob.name} exists with other content: published versions are "
                               f"immutable") from None
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


# ---- the `latest` pointer ----------------------------------------------------------------------------------------

def _parse(data: bytes | None, where: str, damaged: bool = False) -> Pointer | str | None:
    """The pointer in data, None when there is none; an unparsable one raises PublishError, or gives DAMAGED."""
    try:
        return None if data is None else model_contract.parse_pointer(data, where)
    except ModelError as error:
        if damaged:
            return DAMAGED
        raise PublishError(str(error)) from None


def read_latest(export_root: str) -> Pointer | None:
    """What `latest` names, or None when nothing was published yet. Raises PublishError on a damaged pointer."""
    where = model_contract.join(export_root, LATEST)
    return _parse(_read(where), where)


def _read_latest_gcs(export_root: str, client=None, attempts: int = 5) -> tuple[Pointer | str | None, int]:
    """(pointer, DAMAGED for one that cannot be parsed, or None; generation of `latest`: 0 when absent, which
    `if_generation_match` reads as "create only")."""
    from google.api_core import exceptions

    where = model_contract.join(export_root, LATEST)
    bucket_name, name = storage.split_gcs(where)
    bucket = (client or storage.gcs_client()).bucket(bucket_name)
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
            # Without it the conditional write below would become an unconditional overwrite.
            raise PublishError(f"{where}: the server reports no object generation")
        return _parse(content, where, damaged=True), int(generation)
    raise PublishError(f"{where} kept changing while being read ({attempts} attempts)")


def _refusal(current, new: Pointer, expected, where: str) -> str:
    """Why `latest` must not move from current to new ("" when it may). Raises PublishError for a damaged
    `latest` unless the caller means to repair it."""
    if current == DAMAGED and expected != DAMAGED:
        read_latest(where.rsplit("/", 1)[0])  # raises, saying what is wrong and what to do
    if expected == DAMAGED:
        return "" if current == DAMAGED else f"latest is readable now ({describe(current)}): nothing to repair"
    if expected == FORWARD:
        newer = current is not None and int(current.version) >= int(new.version)
        return f"latest names version {current.version}, not older than {new.version}" if newer else ""
    if current != expected:
        return (f"latest names {describe(current)}, not {describe(expected)} as it did when this publish started: "
                f"another publisher or a rollback moved it meanwhile")
    return ""


def describe(pointer) -> str:
    return {None: "nothing", DAMAGED: "an unreadable pointer"}.get(pointer) or f"version {pointer.version}"


def move_latest(export_root: str, new: Pointer, *, expected=FORWARD, attempts: int = 20) -> LatestMove:
    """Points `latest` at `new` when allowed: expected=FORWARD moves only to a newer version; expected=<Pointer or
    None> moves only when `latest` still names exactly that (None: nothing published yet); expected=DAMAGED only
    replaces a `latest` that cannot be parsed. Never raises for a refusal: the returned LatestMove says what
    `latest` names and why it did not move. Raises PublishError when `latest` is damaged (and not expected so)."""
    data = model_contract.format_pointer(new)
    if not storage.is_remote(export_root):
        os.makedirs(export_root, exist_ok=True)
        with open(os.path.join(export_root, ".latest.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            where = os.path.join(export_root, LATEST)
            current = _parse(_read(where), where, damaged=True)
            if current == new:
                return LatestMove(True, current)  # ours already: a retry
            refusal = _refusal(current, new, expected, where)
            if refusal:
                return LatestMove(False, None if current == DAMAGED else current, refusal)
            staging = os.path.join(export_root, f".{LATEST}.{os.getpid()}.{threading.get_ident()}")
            with open(staging, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, os.path.join(export_root, LATEST))
            return LatestMove(True, new)
    from google.api_core import exceptions

    client = storage.gcs_client()
    bucket_name, name = storage.split_gcs(model_contract.join(export_root, LATEST))
    for _ in range(attempts):
        current, generation = _read_latest_gcs(export_root, client)
        if current == new:
            return LatestMove(True, current)  # also when our own earlier write succeeded but its reply was lost
        refusal = _refusal(current, new, expected, model_contract.join(export_root, LATEST))
        if refusal:
            return LatestMove(False, None if current == DAMAGED else current, refusal)
        blob = client.bucket(bucket_name).blob(name)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
            return LatestMove(True, new)
        except exceptions.PreconditionFailed:
            continue  # another writer moved it between our read and write: read again and decide again
    raise PublishError(f"could not update {export_root}/{LATEST} after {attempts} attempts")


def publish_export(local_dir: str, export_root: str, version: str, *, expected=FORWARD) -> Published:
    """publish_version, then move_latest to it (see both). The caller must look at the result's `move`."""
    uri = publish_version(local_dir, export_root, version)
    with open(os.path.join(local_dir, MODEL_INFO), "rb") as handle:
        checksum = model_contract.sha256_bytes(handle.read())
    return Published(uri, version, move_latest(export_root, Pointer(version, checksum), expected=expected))


def resolve_model(uri: str) -> str:
    """A version directory as given, or the one a root's `latest` names (for local tools; the scorer resolves and
    verifies with beam_pipelines.model_handler.resolve_and_check_model)."""
    uri = uri.rstrip("/")
    pointer = read_latest(uri)
    if pointer is not None:
        return model_contract.join(uri, pointer.version)
    if _read(model_contract.join(uri, MODEL_INFO)) is None:  # small, unlike saved_model.pb
        raise PublishError(f"{uri} is neither a model version (no {MODEL_INFO}) nor an export root with a "
                           f"'{LATEST}' file; pass MODEL=<model_dir>/export or MODEL=<model_dir>/export/<version>")
    return uri


# ---- reading a published version back ----------------------------------------------------------------------------

def _read_info(export_root: str, version: str) -> tuple[dict, str]:
    if not model_contract.is_version(version):
        raise PublishError(f"{version!r} is not a version (an integer directory name under {export_root})")
    where = model_contract.join(export_root, version, MODEL_INFO)
    data = _read(where)
    if data is None:
        known = ", ".join(list_versions(export_root)[-10:]) or "none"
        raise PublishError(f"{model_contract.join(export_root, version)} is not a complete version (no {MODEL_INFO}); "
                           f"versions there: {known}")
    try:
        info = model_contract.parse_model_info(data, where)
    except ModelError as error:
        raise PublishError(f"version {version} is broken: {error}") from None
    if str(info["model_version"]) != version:
        raise PublishError(f"version {version} is broken: {where} says model_version {info['model_version']!r}: it "
                           f"was copied from another version")
    return info, model_contract.sha256_bytes(data)


def _verify(directory: str, info: dict, version: str) -> None:
    try:
        model_contract.verify_files(directory, info, _sha256_of)
    except ModelError as error:
        raise PublishError(f"version {version} is broken: {error}") from None


def check_version(export_root: str, version: str) -> tuple[dict, str]:
    """(model_info, sha256 of its bytes) of a complete version whose files all match their checksums; raises
    PublishError saying what is wrong."""
    info, checksum = _read_info(export_root, version)
    _verify(model_contract.join(export_root, version), info, version)
    return info, checksum


def fetch_version(export_root: str, version: str) -> tuple[str, dict, str]:
    """(local directory, model_info, sha256 of model_info.json) of a complete, verified version: the directory
    itself when local; a temporary copy of a gs:// version (TensorFlow's own GCS filesystem ignores the emulators
    the tests use), which the caller removes. The `files` keys are checked before anything is copied."""
    info, checksum = _read_info(export_root, version)
    directory = model_contract.join(export_root, version)
    if not storage.is_remote(export_root):
        _verify(directory, info, version)
        return directory, info, checksum
    local = tempfile.mkdtemp(prefix=f"catsdogs-version-{version}-")
    try:
        bucket_name, prefix = storage.split_gcs(directory)
        bucket = storage.gcs_client().bucket(bucket_name)
        for relative in info["files"]:  # keys validated by parse_model_info: plain relative paths
            target = os.path.join(local, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            bucket.blob(f"{prefix}/{relative}").download_to_filename(target)
        _verify(local, info, version)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local, info, checksum
