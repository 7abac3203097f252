"""Folders, files and globs, local or `gs://`, listed as a stream of `FileRef`s: where both Beam jobs find their inputs.

`list_files(pattern)` streams lazily: GCS one page (1,000 names) at a time, local folders one directory entry at a time
(os.scandir, unsorted), so nothing holds the list of every file (Beam's own GCS listing keeps a set of every name).
Local symlinks to folders are followed once (a loop is reported, not walked again); broken links, FIFOs, sockets and
devices come out as refs with a `problem` instead of vanishing, so the jobs can account for them. Globs use Beam's
dialect (`*` within a folder, `**` across folders).
"""

import datetime
import os
import re
import stat
from collections.abc import Iterator
from typing import NamedTuple

from trainer import storage

LIST_PAGE_SIZE = 1000

# Why a listed entry cannot be read as a file (FileRef.problem); also dead-letter reasons in both jobs.
BROKEN_SYMLINK = "broken_symlink"
SYMLINK_LOOP = "folder_listed_twice"  # a link to a folder already walked (a loop, or the same folder twice)
NOT_A_FILE = "not_a_regular_file"
UNREADABLE_FOLDER = "unreadable_folder"
LISTING_PROBLEMS = (BROKEN_SYMLINK, SYMLINK_LOOP, NOT_A_FILE, UNREADABLE_FOLDER)

_WILDCARD = re.compile(r"[*?\[]")


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
        pattern = storage.absolute(pattern)
        self._prefix, self._regex = _split_pattern(pattern)
        self._folder = self._prefix.rstrip("/") + "/"

    def __call__(self, path: str) -> bool:
        if self._regex is not None:
            return bool(self._regex.match(path))
        return path == self._prefix or path.startswith(self._folder)


def list_files(pattern: str) -> Iterator[FileRef]:
    """Every file under a folder (recursively), the file itself, or every file matching a glob, lazily and in no set
    order. Local paths come out absolute."""
    pattern = storage.absolute(pattern)
    prefix, regex = _split_pattern(pattern)
    raw_prefix = regex is not None
    listing = (_list_gcs(prefix, raw_prefix) if storage.is_remote(prefix)
               else _list_local(prefix, descend=True, raw_prefix=raw_prefix))
    for ref in listing:
        if regex is None or regex.match(ref.path):
            yield ref


def _list_gcs(prefix: str, raw_prefix: bool) -> Iterator[FileRef]:
    """Objects under a folder (or the one object named), or, for a glob's text before its wildcard (`raw_prefix`),
    every object whose name starts with it."""
    bucket, name = storage.split_gcs(prefix)
    if name and not name.endswith("/") and not raw_prefix:
        blob = storage.gcs_client().bucket(bucket).get_blob(name, retry=storage.retry_policy())
        if blob is not None:  # a single object named exactly; else a folder given without its '/'
            yield FileRef(prefix, int(blob.size or 0), _timestamp(blob.updated), int(blob.generation or 0))
            return
        name += "/"
    pages = storage.gcs_client().list_blobs(bucket, prefix=name, page_size=LIST_PAGE_SIZE,
                                            retry=storage.retry_policy(),
                                            fields="items(name,size,updated,generation),nextPageToken")
    for blob in pages:  # an HTTPIterator: fetches the next page only when this one is used up
        if not blob.name.endswith("/"):  # folder placeholder objects made by consoles
            yield FileRef(f"{storage.GCS_PREFIX}{bucket}/{blob.name}", int(blob.size or 0), _timestamp(blob.updated),
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


def first_unmatched(patterns) -> str | None:
    """The first pattern that matches no file (almost always a typo in a path), or None."""
    for pattern in patterns:
        if next(list_files(pattern), None) is None:
            return pattern
    return None
