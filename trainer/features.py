"""The TFRecord schema: the single source of feature keys and label names.

Imported by the preprocessing pipeline (which must not import TensorFlow), the trainer and the
scoring job alike, so it uses the standard library only. The dataset folder's layout (shards, metadata.json,
versions) is trainer/dataset_contract.py's. `encode_example` writes the
`tf.train.Example` wire format by hand; `tests/trainer/test_features.py` proves that
TensorFlow parses it back.
"""

import re
import struct

SCHEMA_VERSION = 1

IMAGE_KEY = "image/encoded"  # JPEG bytes, already resized to the dataset's image size
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
LABEL_KEY = "image/label"  # int64 index into the class names
CLASS_KEY = "image/class"  # the class name, for people reading records
ID_KEY = "image/id"  # sha256 of the decoded pixels: the record's identity
SOURCE_KEY = "image/source"  # the path the image was read from

SPLITS = ("train", "validation", "test")
DEFAULT_CLASS_NAMES = ("cat", "dog")
DEFAULT_IMAGE_SIZE = 180



def label_for_name(name: str, class_names=DEFAULT_CLASS_NAMES) -> int | None:
    """Maps a folder or file-prefix name to a label index, or None when it names no class.

    Case-insensitive and forgiving of plurals: `Cat`, `cats`, `CAT` all give the index of `cat`;
    `boxes` matches `box`.
    """
    word = name.strip().lower()
    candidates = {word}
    if word.endswith("es"):
        candidates.add(word[:-2])
    if word.endswith("s"):
        candidates.add(word[:-1])
    for index, class_name in enumerate(class_names):
        if class_name.lower() in candidates:
            return index
    return None


_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def validate_class_names(class_names) -> tuple[str, ...]:
    """Returns the class names as a tuple, or raises ValueError saying what is wrong with them."""
    names = tuple(class_names)
    if len(names) != 2:
        raise ValueError(f"exactly two class names are supported (got {len(names)}: {names})")
    for name in names:
        if not _CLASS_NAME.match(name):
            raise ValueError(f"class name {name!r} must be lower-case letters, digits or _")
    if names[0] == names[1]:
        raise ValueError(f"class names must differ (got {names})")
    return names


# --- tf.train.Example wire format -----------------------------------------------------------
# Example   { Features features = 1; }
# Features  { map<string, Feature> feature = 1; }
# Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# BytesList { repeated bytes value = 1; }   Int64List { repeated int64 value = 1 [packed]; }


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64 is encoded as its two's complement, ten bytes long
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(value) -> bytes:
    if isinstance(value, bytes):
        return _length_delimited(1, _length_delimited(1, value))
    if isinstance(value, str):
        return _length_delimited(1, _length_delimited(1, value.encode("utf-8")))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"unsupported feature value {value!r}")
    if isinstance(value, float):
        return _length_delimited(2, _length_delimited(1, struct.pack("<f", value)))
    return _length_delimited(3, _length_delimited(1, _varint(value)))


_SMALL = [bytes((value,)) for value in range(0x80)]
_KEYS = {}  # key -> its encoded map-entry key field (the same few keys, for every record)


def _key_field(key: str) -> bytes:
    field = _KEYS.get(key)
    if field is None:
        field = _KEYS[key] = _length_delimited(1, key.encode("utf-8"))
    return field


def encode_example(features: dict) -> bytes:
    """Serialises {key: bytes | str | int | float} as a `tf.train.Example` (one value per key)."""
    entries = b"".join(
        _length_delimited(1, _key_field(key) + _length_delimited(2, _feature(value)))
        for key, value in sorted(features.items())
    )
    return _length_delimited(1, entries)


def make_example(*, image_jpeg: bytes, height: int, width: int, label: int, class_name: str,
                 image_id: str, source: str) -> bytes:
    """The one record layout every split uses."""
    return encode_example({
        IMAGE_KEY: image_jpeg,
        HEIGHT_KEY: height,
        WIDTH_KEY: width,
        LABEL_KEY: label,
        CLASS_KEY: class_name,
        ID_KEY: image_id,
        SOURCE_KEY: source,
    })
