"""The whole chain through the Makefile, as a user runs it: `make train`, then `make score`.

Tiny generated images of two visibly different classes (horizontal vs vertical stripes), so that a few
epochs of the seed CNN must learn them. About two minutes on two cores.
"""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf

from tests import corpus
from trainer import dataset_contract, features

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def count_records(paths) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(paths))


def test_make_train_then_make_score(tmp_path):
    images = tmp_path / "images"
    paths = corpus.write_easy_dataset(images, per_class=60, class_dirs=("Cats", "dog"), size=48)
    (images / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    workdir = tmp_path / "work"
    common = [f"WORKDIR={workdir}", f"IMAGES={images}"]

    make("train", *common, "EPOCHS=6", "ARCH=seed_cnn", "PREPROCESS_ARGS=--image_size 32",
         "TRAIN_ARGS=--batch_size 16 --learning_rate 0.002 --warmup_epochs 0")

    dataset = workdir / "data"
    version_dir, metadata = dataset_contract.locate(str(dataset), lambda p: Path(p).read_bytes(), os.path.exists)
    written = {split: count_records([path for path, _ in dataset_contract.split_shards(metadata, version_dir, split)])
               for split in features.SPLITS}
    assert sum(written.values()) == len(paths)  # every good image once, the broken file rejected
    assert written == {split: metadata["counts"][split]["total"] for split in features.SPLITS}
    assert metadata["read"] == len(paths) + 1
    rejected = [json.loads(line) for path in Path(version_dir).glob("rejected-*.jsonl") for line in path.open()]
    assert [row["path"].endswith("broken.jpg") for row in rejected] == [True]

    model_dir = workdir / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.85, metrics  # chance is 0.5
    assert metrics["promotion"]["decision"] == "blessed" and metrics["promotion"]["baseline"] is None  # the first
    assert (model_dir / "report.png").stat().st_size > 10_000
    version = json.loads((model_dir / "export" / "latest").read_text())["version"]
    assert (model_dir / "export" / version / "saved_model.pb").is_file()

    score_images = tmp_path / "to_score"
    new_paths = corpus.write_easy_dataset(score_images, per_class=10, size=48, seed=1)
    (score_images / "notes.txt").write_text("not an image")
    refused = subprocess.run(["make", "--no-print-directory", "score", *common, f"SCORE_IMAGES={score_images}",
                              f"ALLOWED_MODEL_PREFIX={tmp_path / 'elsewhere'}"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "outside --allowed_model_prefix" in refused.stderr
    make("score", *common, f"SCORE_IMAGES={score_images}", "SCORE_ARGS=--run_id e2e --format csv",
         f"ALLOWED_MODEL_PREFIX={model_dir / 'export'}")

    run_dir = workdir / "scores" / "e2e"
    rows = [row for path in sorted(run_dir.glob("predictions-*.csv")) for row in csv.DictReader(path.open())]
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in new_paths)
    correct = sum(row["predicted_class"] == Path(row["path"]).parent.name for row in rows)
    assert correct / len(rows) >= 0.8
    assert {row["model_version"] for row in rows} == {version}
    errors = [json.loads(line) for path in run_dir.glob("errors-*.jsonl") for line in path.open()]
    assert [Path(row["path"]).name for row in errors] == ["notes.txt"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["matched"] == len(new_paths) + 1

    # `make train` again in a fresh MODEL_DIR, publishing into (and gated against) the first run's export root.
    second = subprocess.run(["make", "--no-print-directory", "train", *common, f"MODEL_DIR={workdir / 'model-2'}",
                             f"EXPORT_DIR={model_dir / 'export'}", "EPOCHS=2", "ARCH=seed_cnn",
                             "PREPROCESS_ARGS=--image_size 32", "TRAIN_ARGS=--batch_size 16 --warmup_epochs 0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode in (0, 4), second.stderr[-4000:]  # published, or not blessed: both are decisions
    recorded = json.loads((workdir / "model-2" / "metrics.json").read_text())["promotion"]
    assert recorded["baseline"]["version"] == version and recorded["baseline"]["metrics"]["accuracy"] is not None
    assert recorded["published"] == (second.returncode == 0)
    assert f"baseline (latest: version {version}) on the same split" in second.stdout


def test_make_train_without_images_fails_fast_with_advice(tmp_path):
    """No default data and no network: the message says to pass IMAGES."""
    result = subprocess.run(["make", "--no-print-directory", "data", f"WORKDIR={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"})
    assert result.returncode != 0
    assert "IMAGES=" in result.stderr
