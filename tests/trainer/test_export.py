import json

import numpy as np
import pytest

from beam_pipelines import imaging
from tests.corpus import easy_pixels, encode
from tests.trainer.datasets import run_python
from trainer import export, model_contract, publish

SIZE = 32

# Loads an export in a fresh process (no Keras model object around) and scores through both signatures.
SCORE_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
files = json.load(open(sys.argv[2]))
out = {"signatures": sorted(loaded.signatures.keys())}
by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant([open(f, "rb").read() for f in files]))
out["bytes_probability"] = by_bytes["probability"].numpy().tolist()
out["bytes_class"] = [c.decode() for c in by_bytes["class_name"].numpy()]
out["bytes_dtypes"] = [by_bytes["probability"].dtype.name, by_bytes["class_name"].dtype.name]
if len(sys.argv) > 3:
    pixels = np.load(sys.argv[3])
    by_pixels = loaded.signatures["serve_pixels"](pixels=tf.constant(pixels))
    out["pixels_probability"] = by_pixels["probability"].numpy().tolist()
    out["pixels_class"] = [c.decode() for c in by_pixels["class_name"].numpy()]
print("RESULT " + json.dumps(out))
"""


def score_in_fresh_process(model_path, image_files, pixels=None, tmp_path=None):
    files_json = tmp_path / "files.json"
    files_json.write_text(json.dumps([str(f) for f in image_files]))
    args = [model_path, files_json]
    if pixels is not None:
        np.save(tmp_path / "pixels.npy", pixels)
        args.append(tmp_path / "pixels.npy")
    result = run_python(SCORE_IN_FRESH_PROCESS, *args)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def tiny_model(size=SIZE, seed=1):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 3))(x)
    return keras.Model(inputs, outputs)


def test_export_writes_contract_and_scores_jpeg_png_and_greyscale_in_a_fresh_process(tmp_path):
    model = tiny_model()
    published = export.export_model(model, str(tmp_path / "export"), class_names=["cat", "dog"],
                                    input_size=[SIZE, SIZE], model_name="tiny", metrics={"accuracy": 0.5},
                                    training_data={"image_size": [SIZE, SIZE]}, version="1700000000")
    assert published == str(tmp_path / "export" / "1700000000")
    info_bytes = (tmp_path / "export" / "1700000000" / "model_info.json").read_bytes()
    assert publish.read_latest(str(tmp_path / "export")) == model_contract.Pointer(
        "1700000000", model_contract.sha256_bytes(info_bytes))
    assert publish.resolve_model(str(tmp_path / "export")) == published

    info = json.loads(info_bytes)
    assert info["model_version"] == "1700000000" and info["model_name"] == "tiny"
    assert info["class_names"] == ["cat", "dog"] and info["input_size"] == [SIZE, SIZE]
    assert info["signatures"] == {"bytes": "serving_default", "pixels": "serve_pixels"}
    assert info["metrics"] == {"accuracy": 0.5} and info["training_data"] == {"image_size": [SIZE, SIZE]}
    assert info["max_image_pixels"] == model_contract.MAX_IMAGE_PIXELS and "promotion" not in info  # ungated
    for key in ("format_version", "threshold", "code_version", "created_at"):
        assert key in info
    on_disk = export.file_hashes(published)
    assert "saved_model.pb" in on_disk and "model_info.json" not in on_disk
    assert info["files"] == on_disk

    pixels = np.stack([easy_pixels(label, seed, SIZE) for label, seed in ((0, 1), (1, 2), (0, 3), (1, 4))])
    grey = np.asarray(pixels[3].mean(axis=2), np.uint8)
    files = []
    for name, content in (("a.png", encode(pixels[0], "PNG")), ("b.png", encode(pixels[1], "PNG")),
                          ("c.jpg", encode(pixels[2], "JPEG", quality=95)), ("d-grey.png", encode(grey, "PNG")),
                          ("e-big.jpg", encode(np.repeat(np.repeat(pixels[1], 4, 0), 4, 1), "JPEG", quality=95))):
        (tmp_path / name).write_bytes(content)
        files.append(tmp_path / name)
    pillow = np.stack([imaging.decode_image(f.read_bytes(), (SIZE, SIZE)).pixels for f in files])
    scored = score_in_fresh_process(published, files, pillow, tmp_path)

    assert {"serving_default", "serve_pixels"} <= set(scored["signatures"])
    assert scored["bytes_dtypes"] == ["float32", "string"]
    expected = model.predict(pillow.astype("float32"), verbose=0).reshape(-1)
    assert np.ptp(expected) > 0.05, "the test model should give different answers to different pictures"
    np.testing.assert_allclose(scored["pixels_probability"], expected, atol=1e-5)
    # Lossless PNGs at the input size decode to the same pixels either way: the answers must agree exactly.
    np.testing.assert_allclose(scored["bytes_probability"][:2], scored["pixels_probability"][:2], atol=1e-5)
    np.testing.assert_allclose(scored["bytes_probability"][3], scored["pixels_probability"][3], atol=1e-5)
    # JPEG decoders and a 4x downscale differ by a few grey levels between libjpeg builds and Pillow vs TF resize.
    np.testing.assert_allclose(scored["bytes_probability"], scored["pixels_probability"], atol=0.05)
    assert scored["bytes_class"] == ["dog" if p >= 0.5 else "cat" for p in scored["bytes_probability"]]


def test_published_versions_are_immutable_and_versions_must_be_integers(tmp_path):
    model = tiny_model()
    kwargs = {"class_names": ["cat", "dog"], "input_size": [SIZE, SIZE], "model_name": "tiny"}
    export.export_model(model, str(tmp_path), version="5", **kwargs)
    with pytest.raises(publish.PublishError, match="immutable"):
        export.export_model(model, str(tmp_path), version="5", **kwargs)
    with pytest.raises(ValueError, match="integer"):
        export.export_model(model, str(tmp_path), version="v1", **kwargs)
    assert publish.read_latest(str(tmp_path)).version == "5"


@pytest.mark.shared_data
@pytest.mark.slow
def test_bytes_and_pillow_pixels_agree_on_real_photos(shared_data, tmp_path):
    """The scoring job decodes with Pillow (imaging.decode_image -> serve_pixels); TF Serving users send bytes
    (serving_default). On real full-resolution photos the two must give nearly the same probability.

    The paths differ in JPEG decoder (libjpeg in TF vs Pillow's, which also decodes at reduced DCT scale when the
    target is at most half the stored size) and in the antialiased resize: a few grey levels per pixel. Bound: 0.05
    in probability, a tenth of the distance from the 0.5 threshold to either end; typical differences are far smaller.
    """
    import keras

    from trainer import models

    size = 180
    train_files = [shared_data / "pets-180" / name / f"{i}.jpg" for name in ("cat", "dog") for i in range(1, 33)]
    train_files = [f for f in train_files if f.exists()]
    x = np.stack([imaging.decode_image(f.read_bytes(), (size, size)).pixels for f in train_files]).astype("float32")
    y = np.array([0.0 if f.parent.name == "cat" else 1.0 for f in train_files])
    keras.utils.set_random_seed(0)
    model = models.resnet_lite((size, size), width=16, depth=1, stages=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=True)  # a few steps: not accurate, not constant
    published = export.export_model(model, str(tmp_path / "export"), class_names=["cat", "dog"],
                                    input_size=[size, size], model_name="resnet_lite")

    photos = sorted((shared_data / "kaggle-fullres").glob("*/*.jpg"))
    photos = photos[:25] + photos[-25:]  # both classes
    pixels = np.stack([imaging.decode_image(p.read_bytes(), (size, size)).pixels for p in photos])
    scored = score_in_fresh_process(published, photos, pixels, tmp_path)
    by_bytes, by_pixels = np.array(scored["bytes_probability"]), np.array(scored["pixels_probability"])
    difference = np.abs(by_bytes - by_pixels)
    print(f"\nbytes vs Pillow pixels on {len(photos)} full-resolution photos: max |dp| = {difference.max():.5f}, "
          f"mean |dp| = {difference.mean():.5f}; probabilities span {by_pixels.min():.3f}..{by_pixels.max():.3f}")
    assert len(by_bytes) == len(photos) == 50
    assert np.ptp(by_pixels) > 0.02, "the model should not answer the same for every photo"
    assert difference.max() < 0.05


def test_flip_tta_serves_the_mean_of_the_photo_and_its_mirror_image(tmp_path):
    model = tiny_model()
    pixels = np.stack([easy_pixels(label, seed, SIZE) for label, seed in ((0, 1), (1, 2), (1, 3))])
    published = export.export_model(model, str(tmp_path / "export"), class_names=["cat", "dog"],
                                    input_size=[SIZE, SIZE], model_name="tiny", version="2", tta="flip")
    info = json.loads((tmp_path / "export" / "2" / publish.MODEL_INFO).read_text())
    assert info["tta"] == "flip"
    files = [tmp_path / f"{i}.png" for i in range(len(pixels))]
    for path, image in zip(files, pixels, strict=True):
        path.write_bytes(encode(image, "PNG"))
    scored = score_in_fresh_process(published, files, pixels=pixels, tmp_path=tmp_path)
    plain = model.predict(pixels.astype("float32"), verbose=0).reshape(-1)
    mirrored = model.predict(pixels[:, :, ::-1].astype("float32"), verbose=0).reshape(-1)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the mirror image really scores differently
    np.testing.assert_allclose(scored["pixels_probability"], (plain + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(scored["bytes_probability"], (plain + mirrored) / 2, atol=1e-5)
