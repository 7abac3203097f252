"""Spill files: many small facts grouped by key with bounded memory, on any runner, without a per-fact element.

Grouping a million photos' facts through the runner's shuffle puts every fact in the shuffle, and the DirectRunner
keeps every shuffle in the memory of one process. Instead, the worker that makes a batch's facts writes them to one
spill file of its own, cut into PARTITIONS sections by a hash of the grouping key; the runner only shuffles
(partition, spill file) pairs, a few per batch; and one step per partition reads that partition's section of every
spill file, so it holds about 1/PARTITIONS of the facts at a time. The files live in the job's work folder and are
removed when it publishes.

File layout: MAGIC, an 8-byte header length, the header (a pickle of {partition: (offset, length)}), then each
partition's section (a pickled list). The files are this job's own, read back by the same code.
"""

import pickle
import struct
import zlib

from trainer import storage

PARTITIONS = 64
MAGIC = b"CDSPILL1"


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(key) % partitions


def write(path: str, by_partition: dict) -> list[int]:
    """Writes the non-empty partitions' lists; returns which partitions the file holds."""
    sections, header, offset = [], {}, 0
    for partition in sorted(p for p, items in by_partition.items() if items):
        data = pickle.dumps(by_partition[partition], protocol=pickle.HIGHEST_PROTOCOL)
        header[partition] = (offset, len(data))
        sections.append(data)
        offset += len(data)
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    storage.write_bytes(path, MAGIC + struct.pack("<Q", len(head)) + head + b"".join(sections))
    return sorted(header)


def read(path: str, partition: int) -> list:
    """One partition's items of a spill file (three ranged reads: the fixed prefix, the header, the section)."""
    prefix = storage.read_range(path, 0, len(MAGIC) + 8)
    if prefix[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a spill file")
    (head_length,) = struct.unpack("<Q", prefix[len(MAGIC):])
    header = pickle.loads(storage.read_range(path, len(prefix), head_length))
    if partition not in header:
        return []
    offset, length = header[partition]
    return pickle.loads(storage.read_range(path, len(prefix) + head_length + offset, length))


def spill(path: str, items, key) -> list[tuple[int, str]]:
    """Writes items, partitioned by key(item) (bytes), to path; returns the (partition, path) pairs to shuffle."""
    by_partition = {}
    for item in items:
        by_partition.setdefault(partition_of(key(item)), []).append(item)
    return [(partition, path) for partition in write(path, by_partition)]


def read_all(paths, partition: int):
    for path in paths:
        yield from read(path, partition)
