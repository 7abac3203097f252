"""Paths and small files of a training run, local or gs://, through tf.io.gfile (the trainer's one file API)."""

import json


def join(*parts: str) -> str:
    """Joins with "/", the separator local (POSIX) paths and gs:// URIs both accept."""
    return "/".join(part.rstrip("/") for part in parts)


def write_json(path: str, content: dict) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
