"""The TFRecord file format without TensorFlow: preprocessing writes (and rewrites) shards with it.

A TFRecord file is a sequence of records, each framed as

    uint64 length (little-endian) | uint32 masked crc32c of the length | data | uint32 masked crc32c of the data

(TensorFlow's record_writer.cc). google-crc32c computes the checksums in C; TensorFlow reads what this writes
(tests/beam_pipelines/test_tfrecords.py checks it) and refuses a record whose checksum fails.
"""

import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def encode(records) -> bytes:
    """A whole TFRecord file holding `records`, in order."""
    return b"".join(frame(record) for record in records)


def decode(data: bytes) -> list[bytes]:
    """The records of a TFRecord file, checking every checksum; ValueError on a damaged file."""
    records, offset = [], 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise ValueError(f"truncated record header at byte {offset}")
        length_bytes = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        if length_crc != _masked_crc(length_bytes):
            raise ValueError(f"length checksum mismatch at byte {offset}")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated record at byte {offset}")
        record = data[start:end]
        if struct.unpack("<I", data[end:end + 4])[0] != _masked_crc(record):
            raise ValueError(f"data checksum mismatch in the record at byte {offset}")
        records.append(record)
        offset = end + 4
    return records
