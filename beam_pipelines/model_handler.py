"""Load an exported catsdogs model for Beam's RunInference, and check it is the model it claims to be.

`read_model_info` / `check_model` validate an export directory (local or gs://) against the contract in
docs/ARCHITECTURE.md: model_info.json with its required fields, two class names, an input size, and a
sha256 for every file in `files` that matches what is on disk. The scoring launcher calls them before
any image is read, so a wrong or half-copied model fails at launch, not on a worker an hour later.

`PixelsModelHandler` is a `ModelHandler` over `tf.saved_model.load` and the `serve_pixels` signature
(Beam's own TensorFlow handler goes through keras.models.load_model, which cannot read a SavedModel
in Keras 3). It takes uint8 pixel arrays from `imaging.decode_image` and returns one
`(probability, class_name, scored_at)` per image: one signature call per batch, nothing per element.
RunInference keeps one loaded model per worker process, shared by its threads. A gs:// export is first
copied to a local temporary directory with Beam's FileSystems (TensorFlow's own GCS filesystem does not
honour STORAGE_EMULATOR_HOST) and its checksums are verified on the copy that is loaded.

TensorFlow is imported only inside `load_model` / `run_inference`, so the launcher starts fast.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from trainer import provenance

MODEL_INFO = "model_info.json"
PIXELS_SIGNATURE = "serve_pixels"
REQUIRED_FIELDS = ("format_version", "model_version", "model_name", "class_names", "input_size", "signatures",
                   "files")
_FIX = ("pass --model an export version directory written by trainer/export.py (it contains saved_model.pb and "
        "model_info.json), or an export root whose `latest` file names one; if the directory was copied by hand, "
        "copy it again completely")

_LOGGER = logging.getLogger(__name__)


class ModelError(ValueError):
    """The model directory is not a usable export; the message says what is wrong and what to do."""


class Prediction(NamedTuple):
    probability: float  # of class_names[1] (dog)
    class_name: str
    scored_at: str  # UTC, ISO 8601 with seconds; one stamp per batch


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_info(model_dir: str) -> dict:
    """model_info.json of an export directory, with its fields checked. Raises ModelError."""
    path = _join(model_dir, MODEL_INFO)
    if not FileSystems.exists(path):
        raise ModelError(f"{model_dir} has no {MODEL_INFO}: it is not a complete catsdogs export; {_FIX}")
    try:
        info = json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path} is not valid JSON ({error}); {_FIX}") from None
    if not isinstance(info, dict):
        raise ModelError(f"{path} must hold a JSON object; {_FIX}")
    missing = [field for field in REQUIRED_FIELDS if field not in info]
    if missing:
        raise ModelError(f"{path} lacks required field(s) {', '.join(missing)}; {_FIX}")
    version = info["model_version"]
    if not (isinstance(version, (str, int)) and str(version).strip()):
        raise ModelError(f"{path}: model_version must be a non-empty string or integer, got {version!r}; {_FIX}")
    names = info["class_names"]
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) and n for n in names)
            and names[0] != names[1]):
        raise ModelError(f"{path}: class_names must be two distinct names (negative, positive), got {names!r}; "
                         f"this scorer handles two-class models only: pass --model a two-class export")
    size = info["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelError(f"{path}: input_size must be [height, width] of positive integers, got {size!r}; {_FIX}")
    signatures = info["signatures"]
    if not isinstance(signatures, dict) or signatures.get("pixels") != PIXELS_SIGNATURE:
        raise ModelError(f"{path}: signatures must name the pixels signature {PIXELS_SIGNATURE!r}, got "
                         f"{signatures!r}; re-export the model with trainer/export.py")
    files = info["files"]
    if not isinstance(files, dict) or "saved_model.pb" not in files:
        raise ModelError(f"{path}: `files` must map every exported file (saved_model.pb included) to its sha256; "
                         f"{_FIX}")
    return info


def verify_files(model_dir: str, info: dict) -> None:
    """Every file listed in model_info.json exists under model_dir with the recorded sha256. Raises ModelError."""
    for relative, expected in sorted(info["files"].items()):
        path = _join(model_dir, relative)
        if not FileSystems.exists(path):
            raise ModelError(f"{path} is listed in {MODEL_INFO} but missing: the export is incomplete; {_FIX}")
        actual = _sha256(path)
        if actual != expected:
            raise ModelError(f"{path} has sha256 {actual} but {MODEL_INFO} records {expected}: the file was changed "
                             f"or only partly copied; {_FIX}")


def check_model(model_dir: str) -> dict:
    """read_model_info + verify_files: what the launcher runs before scoring anything."""
    info = read_model_info(model_dir)
    verify_files(model_dir, info)
    return info


def fetch_model(model_dir: str, info: dict) -> str:
    """A local directory holding the export: model_dir itself when local, else a verified temporary copy."""
    if not model_dir.startswith("gs://"):
        verify_files(model_dir, info)
        return model_dir
    local = tempfile.mkdtemp(prefix=f"catsdogs-model-{info['model_version']}-")
    try:
        for relative in info["files"]:
            target = os.path.join(local, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(_join(model_dir, relative),
                                  compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                    open(target, "wb") as destination:
                shutil.copyfileobj(source, destination, 1 << 20)
        verify_files(local, info)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local


def configure_threads(intra_op_threads: int, inter_op_threads: int) -> None:
    """Sets TensorFlow's thread pools; only possible before TF's runtime starts, so later calls just log."""
    import tensorflow as tf

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:  # TF was already initialised in this process (tests, a second model): keep its pools
        _LOGGER.info("TensorFlow already initialised; keeping its thread pools")


class PixelsModel:
    """A loaded SavedModel behind one method with plain inputs and outputs, so it also works through the
    cross-process proxy of --share_model_across_processes (which forwards method calls, not attributes)."""

    def __init__(self, loaded):
        self._loaded = loaded  # keeps the variables alive
        self._signature = loaded.signatures[PIXELS_SIGNATURE]

    def predict(self, pixels: np.ndarray) -> tuple[list[float], list[str]]:
        import tensorflow as tf

        outputs = self._signature(pixels=tf.constant(pixels))
        probabilities = outputs["probability"].numpy().tolist()
        return probabilities, [name.decode("utf-8") for name in outputs["class_name"].numpy().tolist()]


class PixelsModelHandler(ModelHandler[np.ndarray, Prediction, Any]):
    """uint8 [h, w, 3] pixels -> Prediction, through the export's `serve_pixels` signature."""

    def __init__(self, model_dir: str, model_info: dict, *, min_batch_size: int = 32, max_batch_size: int = 128,
                 intra_op_threads: int = 0, inter_op_threads: int = 0, large_model: bool = False):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model)
        self._model_dir = model_dir
        self._info = model_info
        self._intra_op_threads = intra_op_threads
        self._inter_op_threads = inter_op_threads

    def load_model(self):
        import tensorflow as tf

        configure_threads(self._intra_op_threads, self._inter_op_threads)
        local = fetch_model(self._model_dir, self._info)
        _LOGGER.info("loading model %s version %s from %s", self._info["model_name"], self._info["model_version"],
                     self._model_dir)
        loaded = tf.saved_model.load(local)
        if local != self._model_dir:  # the variables are in memory now; the temporary copy can go
            shutil.rmtree(local, ignore_errors=True)
        if PIXELS_SIGNATURE not in loaded.signatures:
            raise ModelError(f"{self._model_dir} has no {PIXELS_SIGNATURE!r} signature; re-export it with "
                             f"trainer/export.py")
        return PixelsModel(loaded)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[Prediction]:
        probabilities, class_names = model.predict(np.stack(batch))
        scored_at = provenance.utc_now()
        return [Prediction(p, c, scored_at) for p, c in zip(probabilities, class_names, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(pixels.nbytes for pixels in batch)  # the default pickles the whole batch just to measure it

    def get_metrics_namespace(self) -> str:
        return "catsdogs.score.inference"
