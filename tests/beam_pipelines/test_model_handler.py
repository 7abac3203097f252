"""PixelsModelHandler and the model checks, called directly (load_model / run_inference) on a real export."""

import json
import shutil

import numpy as np
import pytest

from beam_pipelines import imaging, model_handler
from tests.beam_pipelines.test_score import SIZE, VERSION, export_tiny_model
from tests.conftest import upload_tree
from tests.corpus import easy_pixels, encode
from trainer import storage


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("model") / "export"
    export_tiny_model(root)
    return root


def _pixels(count: int) -> list[np.ndarray]:
    return [imaging.decode_image(encode(easy_pixels(i % 2, i, 48)), (SIZE, SIZE)).pixels for i in range(count)]


def test_run_inference_matches_the_signature_called_directly(export_root):
    import tensorflow as tf

    model_dir = str(export_root / VERSION)
    info = model_handler.check_model(model_dir)
    handler = model_handler.PixelsModelHandler(model_dir, info, min_batch_size=2, max_batch_size=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 4}
    model = handler.load_model()
    batch = _pixels(5)
    predictions = list(handler.run_inference(batch, model))
    direct = tf.saved_model.load(model_dir).signatures["serve_pixels"](pixels=tf.constant(np.stack(batch)))
    assert [p.probability for p in predictions] == pytest.approx(direct["probability"].numpy().tolist(), abs=1e-6)
    assert [p.class_name for p in predictions] == [c.decode() for c in direct["class_name"].numpy()]
    assert all(isinstance(p.probability, float) and p.scored_at.endswith("Z") for p in predictions)
    assert handler.get_num_bytes(batch) == 5 * SIZE * SIZE * 3


@pytest.mark.parametrize(("change", "message"), [
    ({"input_size": [32]}, "input_size must be [height, width]"),
    ({"class_names": ["cat", "cat"]}, "class_names must be two distinct names"),
    ({"signatures": {"bytes": "serving_default"}}, "must name the pixels signature"),
    ({"files": {}}, "`files` must map every exported file"),
    ({"model_version": None}, "model_version must be a non-empty string"),
])
def test_read_model_info_rejects_each_malformed_field(change, message, export_root, tmp_path):
    model_dir = tmp_path / VERSION
    shutil.copytree(export_root / VERSION, model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    (model_dir / "model_info.json").write_text(json.dumps({**info, **change}))
    with pytest.raises(model_handler.ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model_handler.read_model_info(str(model_dir))


def test_read_model_info_names_missing_fields(export_root, tmp_path):
    model_dir = tmp_path / VERSION
    shutil.copytree(export_root / VERSION, model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    del info["input_size"], info["files"]
    (model_dir / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(model_handler.ModelError, match="lacks required field.*input_size, files"):
        model_handler.read_model_info(str(model_dir))


def test_gcs_model_is_copied_locally_verified_and_a_tampered_copy_refused(gcs_bucket, export_root, tmp_path):
    upload_tree(export_root / VERSION, f"{gcs_bucket}/export/{VERSION}")
    remote = f"{gcs_bucket}/export/{VERSION}"
    info = model_handler.check_model(remote)
    handler = model_handler.PixelsModelHandler(remote, info)
    predictions = list(handler.run_inference(_pixels(3), handler.load_model()))
    assert len(predictions) == 3 and all(0.0 <= p.probability <= 1.0 for p in predictions)

    variables = next(name for name in info["files"] if name.startswith("variables/variables.data"))
    storage.write_bytes(f"{remote}/{variables}", b"not the trained weights")
    with pytest.raises(model_handler.ModelError, match=f"{variables} has sha256"):
        model_handler.fetch_model(remote, info)
    with pytest.raises(model_handler.ModelError, match="has sha256"):
        handler.load_model()


def test_lineage_names_the_model_and_the_dataset_it_was_trained_on():
    training_data = {"version": "2026-01-01T00:00:00Z-abc", "finished_at": "2026-01-01T00:05:00Z",
                     "code_version": "abc123", "counts": {"train": {"total": 10}}}
    info = {"model_name": "resnet_lite", "model_version": "1700000000", "created_at": "2026-01-02T00:00:00Z",
            "code_version": "def456", "training_data": training_data}
    assert model_handler.lineage(info) == {
        "model_name": "resnet_lite", "model_version": "1700000000", "model_created_at": "2026-01-02T00:00:00Z",
        "model_code_version": "def456",
        "dataset": {"version": "2026-01-01T00:00:00Z-abc", "finished_at": "2026-01-01T00:05:00Z",
                    "code_version": "abc123"}}
    # an export made from a dataset that records no version (preprocessing before it did) still says what it knows
    older = model_handler.lineage({**info, "model_version": 5, "training_data": {"finished_at": "t"}})
    assert older["model_version"] == "5" and older["dataset"] == {"version": None, "finished_at": "t",
                                                                   "code_version": None}
