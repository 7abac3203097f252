"""Files on local disk and `gs://` alike, through Beam's FileSystems.

`ListFiles` lists folders and glob patterns as a stream: one worker walks each pattern lazily
(os.walk locally, paged listing on GCS) and the paths are reshuffled across workers, so no process
ever holds the list of every path. `replace_directory` gives jobs a staging-then-swap commit.
"""

import json
import os
import posixpath
import re
import shutil
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

_WILDCARD = re.compile(r"[*?\[]")


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if parts else base


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def write_bytes(path: str, data: bytes) -> None:
    if not is_gcs(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


def write_json(path: str, value) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def _split_pattern(pattern: str) -> tuple[str, re.Pattern | None]:
    """(prefix to list, regex the full path must match) for a folder or glob pattern."""
    match = _WILDCARD.search(pattern)
    if match is None:  # a folder (everything below it, recursively) or a single file
        if FileSystems.exists(pattern) and not _is_dir(pattern):
            return pattern, re.compile(re.escape(pattern) + r"\Z")
        return pattern.rstrip("/") + "/", None
    prefix = pattern[: match.start()]
    regex = re.compile(FileSystems.get_filesystem(pattern).translate_pattern(pattern))
    return prefix, regex


def _is_dir(path: str) -> bool:
    return not is_gcs(path) and os.path.isdir(path)


def iter_files(pattern: str) -> Iterator[FileMetadata]:
    """Yields every file under a folder, or matching a glob (`*`, `**`, `?`), lazily, in no set order."""
    if not is_gcs(pattern):
        pattern = os.path.abspath(pattern) + ("/" if pattern.endswith("/") else "")
    prefix, regex = _split_pattern(pattern)
    # GCS lists in pages, lazily; locally os.walk is lazy too.
    listing = FileSystems.get_filesystem(prefix)._list(prefix) if is_gcs(prefix) else _walk_local(prefix)
    for metadata in listing:
        if regex is None or regex.match(metadata.path):
            yield metadata


def _walk_local(prefix: str) -> Iterator[FileMetadata]:
    if os.path.isfile(prefix):
        yield FileMetadata(prefix, os.path.getsize(prefix))
        return
    directory = prefix if prefix.endswith("/") else posixpath.dirname(prefix)
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if path.startswith(prefix):
                try:
                    yield FileMetadata(path, os.path.getsize(path))
                except OSError:  # vanished between listing and stat: it is not there to process
                    continue


class ListFiles(beam.PTransform):
    """Patterns (folders or globs, local or gs://) -> (path, size) for every file, spread over workers.

    The listing streams: each pattern is walked lazily and cut into lists of up to `BATCH` files, and the lists,
    not the files, are what the Reshuffle spreads (a Reshuffle costs several steps per element). `batched=True`
    outputs those lists (for a DoFn that works through a batch, like preprocessing's decoder pipeline), else one
    element per file.
    """

    BATCH = 64

    def __init__(self, patterns, counter_namespace: str = "catsdogs", batched: bool = False):
        super().__init__()
        self._patterns = list(patterns)
        self._namespace = counter_namespace
        self._batched = batched

    def expand(self, pipeline):
        namespace, size = self._namespace, self.BATCH

        def list_pattern(pattern):
            listed = beam.metrics.Metrics.counter(namespace, "files_listed")
            batch = []
            for metadata in iter_files(pattern):
                listed.inc()
                batch.append((metadata.path, metadata.size_in_bytes))
                if len(batch) == size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        batches = (
            pipeline
            | "Patterns" >> beam.Create(self._patterns)
            | "Walk" >> beam.FlatMap(list_pattern)
            | "Spread" >> beam.Reshuffle()
        )
        return batches if self._batched else batches | "Unbatch" >> beam.FlatMap(lambda batch: batch)


def check_patterns_match(patterns) -> None:
    """Fails fast, at launch, when a pattern matches nothing: almost always a typo in a path."""
    for pattern in patterns:
        if next(iter_files(pattern), None) is None:
            raise SystemExit(f"error: no files found at {pattern!r}; check the path (folders are read recursively, "
                             f"globs like 'images/*/*.jpg' and gs://bucket/prefix/ work too)")


def delete_tree(path: str) -> None:
    """Removes a directory (local) or every object under a prefix (gs://); missing is fine."""
    if not is_gcs(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    prefix = path.rstrip("/") + "/"
    paths = [metadata.path for metadata in iter_files(prefix)]
    if paths:
        FileSystems.delete(paths)


def replace_directory(staging: str, final: str, marker: str | None = None) -> None:
    """Makes a fully written staging directory the final one, replacing what was there.

    Locally this is two renames (the old directory is moved aside, then deleted), so readers see either
    the old complete set or the new one. GCS has no rename: the old objects are deleted and the new ones copied,
    so readers must wait for the completion marker file (metadata.json, summary.json) that the caller writes after
    this returns. `marker` names that file: on GCS it is deleted first, so a replacement killed half-way never
    leaves a mix of old and new files that still carries the old marker.
    """
    if not is_gcs(final):
        final = final.rstrip("/")
        aside = f"{final}.old-{os.getpid()}"
        if os.path.exists(final):
            os.rename(final, aside)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        os.rename(staging.rstrip("/"), final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if marker and exists(join(final, marker)):
        FileSystems.delete([join(final, marker)])
    delete_tree(final)
    source_prefix = staging.rstrip("/") + "/"
    sources = [metadata.path for metadata in iter_files(source_prefix)]
    destinations = [final.rstrip("/") + "/" + path[len(source_prefix):] for path in sources]
    if sources:
        FileSystems.rename(sources, destinations)
