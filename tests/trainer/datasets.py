"""Tiny TFRecord datasets in the layout preprocessing writes (trainer/dataset_contract.py), generated under tmp_path.

The preprocessing pipeline is tested elsewhere; these fixtures write records with the same schema
(`features.make_example`) so the trainer's tests don't depend on it.
"""

import json
import subprocess
import sys
from pathlib import Path

from beam_pipelines import imaging
from tests.corpus import easy_pixels
from trainer import dataset_contract, features

REPO = Path(__file__).resolve().parents[2]


def write_dataset(root: Path, *, size: int = 32, per_class=None, num_shards: int = 2, seed: int = 0) -> Path:
    """Writes the easy stripes task (class 0 horizontal, class 1 vertical) as TFRecord shards plus metadata.json."""
    import tensorflow as tf

    per_class = per_class or {"train": 48, "validation": 16, "test": 16}
    version = dataset_contract.version_name(1)
    (root / version).mkdir(parents=True, exist_ok=True)
    class_names = list(features.DEFAULT_CLASS_NAMES)
    counts, shards = {}, {}
    for split_index, split in enumerate(features.SPLITS):
        n = per_class[split]
        records = []
        for label, name in enumerate(class_names):
            for i in range(n):
                pixels = easy_pixels(label, seed * 1_000_000 + split_index * 100_000 + label * 10_000 + i, size)
                records.append(features.make_example(
                    image_jpeg=imaging.encode_jpeg(pixels), height=size, width=size, label=label, class_name=name,
                    image_id=imaging.content_hash(pixels), source=f"{split}/{name}/{i}.jpg"))
        records = records[0::2] + records[1::2]  # interleave the classes across shards
        shards[split] = []
        for shard in range(num_shards):
            name = dataset_contract.shard_name(split, f"s{shard:03d}")
            with tf.io.TFRecordWriter(str(root / version / name)) as writer:
                for record in records[shard::num_shards]:
                    writer.write(record)
            shards[split].append({"path": name, "records": len(records[shard::num_shards])})
        counts[split] = {name: n for name in class_names} | {"total": 2 * n}
    metadata = {
        "format_version": dataset_contract.FORMAT_VERSION, "version": version,
        "schema_version": features.SCHEMA_VERSION, "image_size": [size, size], "class_names": class_names,
        "counts": counts, "shards": shards, "num_shards": {split: num_shards for split in features.SPLITS},
        "read": 0, "written": sum(c["total"] for c in counts.values()), "duplicates": 0, "rejected": {},
        "inputs": ["generated"], "options": {}, "code_version": "test",
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z",
    }
    data = json.dumps(metadata, indent=2).encode()
    (root / version / dataset_contract.METADATA_FILE).write_bytes(data)
    (root / dataset_contract.LATEST).write_bytes(dataset_contract.pointer(version, data))
    return root


def run_python(code: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (the repo on sys.path); fails the test with its output if it fails."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result
