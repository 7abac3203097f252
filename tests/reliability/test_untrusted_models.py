"""Case 8: the scorer loads only a model it can verify, from where it is allowed to, and never deserialises Keras
files (whose Lambda layers carry Python bytecode).

Each test drives the scoring launcher (`score.run`, or `model_handler.resolve_and_check_model`, which it calls) as a
CronJob would and checks that nothing was scored or written: a model whose checksums fail, one whose model_info.json
was rewritten together with its files (caught by the sha256 the `latest` pointer records), a gs:// model whose
`files` keys lead outside its directory, a Keras file, a model outside the allowed prefix.
A damaged model (a truncated saved_model.pb, a missing model_info.json) is tested in tests/beam_pipelines/
test_score.py::test_a_wrong_model_fails_at_launch_with_a_clear_message; here the models are intact but not what
they claim to be, or not where they should be.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from beam_pipelines import score
from tests.beam_pipelines.test_score import VERSION, export_tiny_model
from tests.corpus import write_easy_dataset
from tests.gcs_servers import fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from tests.trainer.datasets import run_python

pytestmark = pytest.mark.slow

# One network exported twice, the second time with other weights: the same Python objects give both checkpoints the
# same object graph, so one's variables load into the other (two separately built models need not: their layer
# names and tracking order can differ from process to process).
EXPORT_TWINS = """
import sys
import numpy as np
from tests.beam_pipelines.test_score import export_tiny_model, tiny_model
model = tiny_model(seed=3)
export_tiny_model(sys.argv[1], model=model)
model.set_weights([np.asarray(w) + np.random.default_rng(4).normal(0, 1, np.shape(w)) for w in model.get_weights()])
export_tiny_model(sys.argv[2], model=model)
"""


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models") / "export"
    export_tiny_model(root)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_easy_dataset(root, per_class=3, size=32)
    return root


def launch(model, images, output, *flags) -> str:
    """score.run's launch-time refusal message; fails the test if the job ran instead."""
    with pytest.raises(SystemExit) as refused:
        score.run(["--runner", "DirectRunner", "--model", str(model), "--input", str(images),
                   "--output_dir", str(output), *map(str, flags)])
    assert not output.exists(), "the job wrote output for a refused model"
    assert refused.value.code == 2
    return str(refused.value)


def test_a_valid_model_with_swapped_weights_is_refused_by_its_checksums(export_root, images, tmp_path):
    """An attacker (or a bad copy) replaces the weights with another model's: the SavedModel still loads and scores,
    so only the sha256 list in model_info.json can tell."""
    run_python(EXPORT_TWINS, tmp_path / "export", tmp_path / "other")
    model = tmp_path / "export" / VERSION
    for weights in (tmp_path / "other" / VERSION / "variables").iterdir():
        shutil.copy(weights, model / "variables" / weights.name)

    import tensorflow as tf

    pixels = tf.zeros([1, 32, 32, 3], tf.uint8) + 128
    served = tf.saved_model.load(str(model)).signatures["serve_pixels"](pixels=pixels)["probability"].numpy()
    original = tf.saved_model.load(str(export_root / VERSION)).signatures["serve_pixels"](pixels=pixels)
    assert served != original["probability"].numpy()  # it loads and serves other answers: only the checksums tell

    message = launch(model, images, tmp_path / "scores")
    assert "variables/variables.data" in message and "has sha256" in message and "records" in message


def _hostile_keras_file(path: Path, marker: Path) -> Path:
    """A .keras model whose Lambda layer writes `marker` whenever the layer is called, as deserialising it calls it."""
    import keras

    action = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(keras.layers.Lambda(action)(inputs)))
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model above called the lambda once
    return path


def test_a_keras_file_with_a_lambda_layer_never_runs(images, tmp_path):
    import keras

    marker = tmp_path / "lambda-ran"
    hostile = _hostile_keras_file(tmp_path / "model.keras", marker)

    message = launch(hostile, images, tmp_path / "scores")
    assert "Keras file" in message and "SavedModel export" in message
    assert not marker.exists()

    # Keras itself refuses it in safe mode (its default, which nothing here turns off)...
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(hostile)
    assert not marker.exists()
    # ...and the file really is hostile: with safe mode off, loading it runs its code.
    keras.models.load_model(hostile, safe_mode=False)
    assert marker.read_text() == "ran"


def test_a_model_outside_the_allowed_prefix_is_refused_even_through_a_symlink(export_root, images, tmp_path):
    allowed = tmp_path / "published"
    allowed.mkdir()
    shutil.copytree(export_root, allowed / "export")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(export_root, elsewhere)
    (allowed / "link").symlink_to(elsewhere, target_is_directory=True)

    message = launch(elsewhere, images, tmp_path / "s1", "--allowed_model_prefix", allowed)
    assert "outside --allowed_model_prefix" in message
    message = launch(allowed / "link", images, tmp_path / "s2", "--allowed_model_prefix", allowed)
    assert "outside --allowed_model_prefix" in message
    # a prefix is a directory, not a string prefix: /x/published-evil is not under /x/published
    shutil.copytree(export_root, tmp_path / "published-evil")
    message = launch(tmp_path / "published-evil", images, tmp_path / "s3", "--allowed_model_prefix", allowed)
    assert "outside --allowed_model_prefix" in message

    summary = score.run(["--runner", "DirectRunner", "--model", str(allowed / "export"), "--input", str(images),
                         "--output_dir", str(tmp_path / "s4"), "--allowed_model_prefix", str(allowed)])
    assert summary["scored"] == 6  # the same model, published where it is allowed, is scored


def test_a_latest_pointer_naming_a_path_instead_of_a_version_is_refused(export_root, images, tmp_path):
    root = tmp_path / "models" / "export"
    shutil.copytree(export_root, root)
    shutil.copytree(export_root / VERSION, tmp_path / "planted")
    (root / "latest").write_text(os.path.relpath(tmp_path / "planted", root) + "\n")  # ../../planted

    message = launch(root, images, tmp_path / "scores")
    assert "latest" in message and "not a version" in message
    assert json.loads((root / VERSION / "model_info.json").read_text())["model_version"] == VERSION


def _swap_in_other_weights(tmp_path) -> Path:
    """An export root whose version holds another model's weights (both exported from one network), as `latest`
    names it; returns the root."""
    run_python(EXPORT_TWINS, tmp_path / "export", tmp_path / "other")
    model = tmp_path / "export" / VERSION
    for weights in (tmp_path / "other" / VERSION / "variables").iterdir():
        shutil.copy(weights, model / "variables" / weights.name)
    return tmp_path / "export"


def test_a_model_info_rewritten_with_its_files_is_caught_by_the_pointers_sha256(images, tmp_path):
    """Whoever swaps the weights can also rewrite model_info.json's checksums: the version is then consistent with
    itself, and only the sha256 that `latest` recorded when the version was published tells."""
    from beam_pipelines import model_handler
    from trainer import export

    root = _swap_in_other_weights(tmp_path)
    version_dir = root / VERSION
    info = json.loads((version_dir / "model_info.json").read_text())
    info["files"] = export.file_hashes(str(version_dir))
    (version_dir / "model_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    model_handler.check_model(str(version_dir))  # every listed checksum matches: the version alone looks fine

    message = launch(root, images, tmp_path / "scores")
    assert "model_info.json has sha256" in message and "`latest` pointer that names this version records" in message


def test_crafted_files_keys_of_a_gcs_model_are_refused_before_anything_is_copied(fake_gcs_bucket, export_root,
                                                                                tmp_path, monkeypatch):
    """A gs:// model is copied to local disk by its `files` keys. GCS object names may contain '..', so a key
    '../../escaped.txt' whose object exists (with a matching sha256) would be written outside the temporary
    directory if the keys were trusted. (fake-gcs-server stores such names as GCS does; gcp-storage-emulator, the
    other tests' server, refuses them.)"""
    import hashlib
    import tempfile

    from google.cloud import storage

    from beam_pipelines import model_handler
    from tests.conftest import upload_tree

    remote = f"{fake_gcs_bucket}/export/{VERSION}"
    upload_tree(export_root / VERSION, remote)
    bucket = storage.Client().bucket(fake_gcs_bucket[len("gs://"):])
    planted = b"written outside the model's temporary directory"
    bucket.blob(f"export/{VERSION}/../../escaped.txt").upload_from_string(planted)
    info = json.loads((export_root / VERSION / "model_info.json").read_text())
    info["files"]["../../escaped.txt"] = hashlib.sha256(planted).hexdigest()
    bucket.blob(f"export/{VERSION}/model_info.json").upload_from_string(json.dumps(info))

    temporary = tmp_path / "tmp" / "catsdogs"
    temporary.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    escaped = tmp_path / "tmp" / "escaped.txt"  # where <tempdir>/catsdogs-model-*/../../escaped.txt lands

    with pytest.raises(model_handler.ModelError, match=r"`files` key '\.\./\.\./escaped\.txt' has a '\.' or '\.\.'"):
        model_handler.resolve_and_check_model(remote, None)  # the launcher refuses it
    with pytest.raises(model_handler.ModelError, match="`files` key"):
        model_handler.fetch_model(remote, info)  # and so does a worker handed the same model_info
    assert not escaped.exists()
    assert list(temporary.iterdir()) == []  # refused before the temporary copy was even created

    info["files"] = {**info["files"], "/etc/escaped.txt": info["files"]["saved_model.pb"]}
    del info["files"]["../../escaped.txt"]
    with pytest.raises(model_handler.ModelError, match="is an absolute path"):
        model_handler.fetch_model(remote, info)
