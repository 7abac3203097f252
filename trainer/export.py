"""Export a trained Keras model as a SavedModel with two serving signatures, and publish it.

The contract (trainer/model_contract.py; docs/ARCHITECTURE.md, "Model directory"):

    serving_default(image_bytes: tf.string [None]) -> {probability: float32 [None], class_name: tf.string [None]}
    serve_pixels(pixels: uint8 [None, h, w, 3])    -> the same outputs

`probability` is the probability of `class_names[1]` (dog). The bytes path decodes any JPEG/PNG/GIF/BMP/WebP with
`tf.io.decode_image`, resizes with bilinear antialiased interpolation to `input_size` (squashed, like the training
records) and rounds to 8-bit values, as `beam_pipelines.imaging.decode_image` (Pillow) does for the pixels path. The
Keras model takes float pixels in [0, 255] and scales them itself. Before decoding, the bytes path reads each image's
size from its header (trainer/image_headers.py) and fails on more than `model_contract.MAX_IMAGE_PIXELS`.

`stage_export` writes and checks the SavedModel in a local temporary directory; `publish_staged` adds
model_info.json and publishes it under a version new in the export root (trainer/publish.py), moving `latest` or
not: the promotion gate (trainer/promotion.py) runs between the two. `export_model` does both, ungated.

Known differences between the two paths, both small on photos (see tests/trainer/test_export.py): Pillow applies EXIF
orientation and composites transparency over white, `tf.io.decode_image` does neither; Pillow decodes large JPEGs at
reduced DCT scale before resizing.
"""

import os
import shutil
import tempfile

from trainer import image_headers, model_contract, provenance, publish, storage
from trainer.model_contract import MODEL_INFO, SIGNATURES, THRESHOLD

_VERSION_ATTEMPTS = 5


def file_hashes(root: str, exclude=(MODEL_INFO,)) -> dict:
    """{relative path with / separators: sha256} of every file below root, except the excluded top-level names."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if relative not in exclude:
                hashes[relative] = storage.sha256(path)
    return dict(sorted(hashes.items()))


def _model_input_dtype(model) -> str:
    inputs = getattr(model, "inputs", None)
    if inputs:
        return str(inputs[0].dtype)
    return "float32"


def build_archive(model, *, class_names, input_size, tta: str = "none"):
    """A keras.export.ExportArchive tracking model, with the two signatures of the contract. tta "flip": each
    probability is the mean of the model's on the picture and on its mirror image (twice the inference cost)."""
    import keras
    import tensorflow as tf

    height, width = (int(v) for v in input_size)
    names = tf.constant(list(class_names), dtype=tf.string)
    input_dtype = tf.as_dtype(_model_input_dtype(model))

    def predict(pixels):  # float32 [None, h, w, 3] with integral values in [0, 255]
        probability = tf.reshape(tf.cast(model(tf.cast(pixels, input_dtype), training=False), tf.float32), [-1])
        if tta == "flip":
            mirrored = model(tf.cast(tf.reverse(pixels, axis=[2]), input_dtype), training=False)
            probability = (probability + tf.reshape(tf.cast(mirrored, tf.float32), [-1])) / 2
        class_name = tf.gather(names, tf.cast(probability >= THRESHOLD, tf.int32))
        return {"probability": probability, "class_name": class_name}

    def decode_one(data):
        data = image_headers.check_pixel_limit(data, model_contract.MAX_IMAGE_PIXELS)  # a bomb is never decoded
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        # Pillow rounds its resized picture to uint8; do the same so both signatures see the same values.
        return tf.clip_by_value(tf.round(image), 0.0, 255.0)

    def serve_bytes(image_bytes):
        pixels = tf.map_fn(decode_one, image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        return predict(pixels)

    def serve_pixels(pixels):
        return predict(tf.cast(pixels, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURES["bytes"], serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(SIGNATURES["pixels"], serve_pixels,
                         input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="pixels")])
    return archive


def _check_signatures(saved_model_dir: str, input_size) -> None:
    """Loads the written SavedModel and runs both signatures on one picture: a broken export is never published."""
    import numpy as np
    import tensorflow as tf

    height, width = input_size
    pixels = np.zeros((1, height, width, 3), np.uint8)
    pixels[:, :, : width // 2] = 200
    png = tf.io.encode_png(pixels[0])
    loaded = tf.saved_model.load(saved_model_dir)
    from_bytes = loaded.signatures[SIGNATURES["bytes"]](image_bytes=tf.reshape(png, [1]))
    from_pixels = loaded.signatures[SIGNATURES["pixels"]](pixels=tf.constant(pixels))
    for outputs in (from_bytes, from_pixels):
        if set(outputs) != {"probability", "class_name"} or outputs["probability"].shape != (1,):
            raise RuntimeError(f"export check failed: unexpected outputs {outputs}")
    difference = abs(float(from_bytes["probability"][0]) - float(from_pixels["probability"][0]))
    if difference > 1e-4:  # a lossless PNG of exactly input_size must give the same answer on both paths
        raise RuntimeError(f"export check failed: the two signatures disagree by {difference} on the same PNG")


def stage_export(model, *, class_names, input_size, tta: str = "none") -> str:
    """A local temporary directory holding model as a SavedModel whose two signatures were loaded back and checked
    (no model_info.json yet). The caller removes it."""
    staging = tempfile.mkdtemp(prefix="catsdogs-export-")
    try:
        build_archive(model, class_names=class_names, input_size=input_size, tta=tta).write_out(staging,
                                                                                                verbose=False)
        _check_signatures(staging, input_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def publish_staged(staging: str, export_root: str, *, model_name: str, class_names, input_size,
                   metrics: dict | None = None, training_data: dict | None = None, promotion: dict | None = None,
                   version: str | None = None, move_latest: bool = True,
                   expected=publish.FORWARD, tta: str = "none") -> publish.Published:
    """Writes model_info.json into a staged export and publishes it as a new version of export_root; moves
    `latest` to it (by publish.move_latest with `expected`) when move_latest. The version is `version`, or one newer
    than every version already there (a later one when another publisher takes it first). The result's `move` (None
    when not moving) says whether `latest` names it: the caller must look."""
    fields = {
        "model_name": model_name, "class_names": [str(name) for name in class_names],
        "input_size": [int(v) for v in input_size], "files": file_hashes(staging), "metrics": metrics or {},
        "training_data": training_data or {}, "code_version": provenance.code_version(),
        "created_at": provenance.utc_now(), "promotion": promotion, "tta": tta,
    }
    if len(fields["class_names"]) != 2:
        raise ValueError(f"exactly two class names are supported, got {fields['class_names']}")
    if version is not None and not model_contract.is_version(str(version)):
        raise ValueError(f"export version must be an integer (seconds since the epoch), got {version!r}")
    for _ in range(_VERSION_ATTEMPTS):
        chosen = str(version) if version is not None else publish.next_version(export_root)
        info = model_contract.build_model_info(version=chosen, **fields)
        with open(os.path.join(staging, MODEL_INFO), "wb") as handle:
            handle.write(model_contract.format_model_info(info))
        try:
            if move_latest:
                return publish.publish_export(staging, export_root, chosen, expected=expected)
            return publish.Published(publish.publish_version(staging, export_root, chosen), chosen, None)
        except publish.VersionTaken:
            if version is not None:
                raise
            # Another trainer published this version between our listing and our copy: take the next one.
    raise publish.PublishError(f"no free version in {export_root} after {_VERSION_ATTEMPTS} attempts: other "
                               f"publishers kept taking them")


def export_model(model, export_root: str, *, class_names, input_size, model_name: str,
                 metrics: dict | None = None, training_data: dict | None = None,
                 version: str | None = None, tta: str = "none") -> str:
    """Writes model as a SavedModel plus model_info.json, checks it loads, publishes it to <export_root>/<version>
    and moves `latest` forward to it, ungated (tests, benchmarks, a model of your own). Returns the published path
    or URI; raises PublishError when `latest` could not be moved to it."""
    staging = stage_export(model, class_names=class_names, input_size=[int(v) for v in input_size], tta=tta)
    try:
        published = publish_staged(staging, export_root, model_name=model_name, class_names=class_names,
                                   input_size=input_size, metrics=metrics, training_data=training_data,
                                   version=version, tta=tta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not published.move.moved:
        raise publish.PublishError(f"{published.uri} was published but `latest` was not moved to it: "
                                   f"{published.move.reason}")
    return published.uri
