"""The dataset directory: its layout, its `latest` pointer and its metadata.json. Standard library only.

Preprocessing writes it and the trainer reads it, through this module only (as trainer/features.py is the one home of
the TFRecord schema):

    DATASET/latest                       {"version": "v00002", "metadata_sha256": "..."}: the current version
    DATASET/v00002/metadata.json         written last: the version is complete once it exists
    DATASET/v00002/train-<batch>.tfrecord, validation-<batch>..., test-<batch>...   records of this version's batches
    DATASET/v00002/facts-<batch>.jsonl   one line per record of those shards (content id, perceptual hash, path, ...)
    DATASET/v00002/rejected-<batch>.jsonl, duplicates-<batch>.jsonl   files not written, each with its reason
    DATASET/v00001/...                   an earlier version; v00002 may list some of its shards (unchanged photos)

A version never changes once written. A new version lists its shards by path relative to its own folder, so shards
of photos that did not change are shared with earlier versions ("../v00001/train-<batch>.tfrecord"), never copied.
Readers resolve `latest` (or take a version folder directly) and read exactly the shards its metadata lists; the
pointer carries the sha256 of that metadata.json, so a reader never pairs one version's pointer with another's files.
Versions are numbered; `latest` only moves by compare-and-swap (the writer's lease and a generation precondition).
"""

import hashlib
import json
import posixpath
import re

FORMAT_VERSION = 2
LATEST = "latest"
METADATA_FILE = "metadata.json"
SHARD_SUFFIX = ".tfrecord"
_VERSION = re.compile(r"^v(\d{5,})$")
REQUIRED = ("format_version", "version", "image_size", "class_names", "counts", "shards")


class DatasetError(ValueError):
    """The dataset directory, its pointer or its metadata is not usable; the message says what to do."""


def version_name(number: int) -> str:
    return f"v{number:05d}"


def version_number(name: str) -> int:
    match = _VERSION.match(name)
    if not match:
        raise DatasetError(f"{name!r} is not a dataset version (expected v00001, v00002, ...)")
    return int(match.group(1))


def shard_name(split: str, batch_id: str) -> str:
    return f"{split}-{batch_id}{SHARD_SUFFIX}"


def facts_name(batch_id: str) -> str:
    return f"facts-{batch_id}.jsonl"


def rejected_name(batch_id: str) -> str:
    return f"rejected-{batch_id}.jsonl"


def duplicates_name(batch_id: str) -> str:
    return f"duplicates-{batch_id}.jsonl"


def join(base: str, relative: str) -> str:
    """base/relative with '..' resolved, for local paths and gs:// alike."""
    if base.startswith("gs://"):
        bucket, _, path = base[len("gs://"):].partition("/")
        return f"gs://{bucket}/" + posixpath.normpath(posixpath.join(path, relative)).lstrip("/")
    return posixpath.normpath(posixpath.join(base, relative))


def pointer(version: str, metadata_bytes: bytes) -> bytes:
    return (json.dumps({"version": version, "metadata_sha256": hashlib.sha256(metadata_bytes).hexdigest()},
                       sort_keys=True) + "\n").encode()


def parse_pointer(text: bytes | str, where: str) -> tuple[str, str]:
    """(version, metadata sha256) from a `latest` pointer; DatasetError when it is not one."""
    try:
        record = json.loads(text)
        version, digest = record["version"], record["metadata_sha256"]
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{where} is not a dataset pointer; preprocess again, or pass --data_dir a version folder "
                           f"(DATASET/v00001)") from None
    version_number(version)  # a version name, never a path that could lead elsewhere
    return version, digest


def check_metadata(metadata_bytes: bytes, where: str, expected_sha256: str | None = None) -> dict:
    """metadata.json parsed and checked; DatasetError naming the problem."""
    if expected_sha256 is not None and hashlib.sha256(metadata_bytes).hexdigest() != expected_sha256:
        raise DatasetError(f"{where} does not match the sha256 its `latest` pointer records: the version was changed "
                           f"after it was published; preprocess again into a new version")
    try:
        metadata = json.loads(metadata_bytes)
    except ValueError as error:
        raise DatasetError(f"{where} is not valid JSON ({error})") from None
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise DatasetError(f"{where} lacks {', '.join(missing)}: it was written by an older version of "
                           f"preprocessing; preprocess again")
    if metadata["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{where} has format_version {metadata['format_version']}, this code reads "
                           f"{FORMAT_VERSION}; preprocess again")
    return metadata


def split_shards(metadata: dict, version_dir: str, split: str) -> list[tuple[str, int]]:
    """(shard path, records) of a split, paths resolved from the version folder."""
    return [(join(version_dir, entry["path"]), int(entry["records"])) for entry in metadata["shards"].get(split, [])]


def locate(data_dir: str, read_bytes, exists) -> tuple[str, dict]:
    """(version folder, checked metadata) for a dataset root (through `latest`) or a version folder given directly.
    `read_bytes(path)` and `exists(path)` are the caller's I/O (tf.io.gfile in the trainer, storage in the jobs)."""
    root = data_dir.rstrip("/")
    if exists(f"{root}/{LATEST}"):
        version, digest = parse_pointer(read_bytes(f"{root}/{LATEST}"), f"{root}/{LATEST}")
        version_dir = f"{root}/{version}"
        path = f"{version_dir}/{METADATA_FILE}"
        if not exists(path):
            raise DatasetError(f"{root}/{LATEST} names {version}, which has no {METADATA_FILE}")
        return version_dir, check_metadata(read_bytes(path), path, digest)
    path = f"{root}/{METADATA_FILE}"
    if exists(path):
        return root, check_metadata(read_bytes(path), path)
    raise DatasetError(f"{data_dir} holds no dataset (neither {LATEST} nor {METADATA_FILE}). Run preprocessing first "
                       f"(make preprocess DATASET={data_dir}).")
