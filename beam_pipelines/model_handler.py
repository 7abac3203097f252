"""Load an exported catsdogs model for Beam's RunInference, and check it is the model it claims to be.

`resolve_and_check_model` is what the scoring launcher runs before any image is read, so a wrong, tampered or
half-copied model fails at launch, not on a worker an hour later: it refuses Keras files and models outside
`--allowed_model_prefix`, follows an export root's `latest` pointer, checks the sha256 the pointer records against
the version's model_info.json, validates model_info.json and every file's sha256 (trainer/model_contract.py, the
one definition of the export layout, shared with the trainer). `lineage` is what a scoring run records of the model
and of the dataset it was trained on.

`PixelsModelHandler` is a `ModelHandler` over `tf.saved_model.load` and the `serve_pixels` signature
(Beam's own TensorFlow handler goes through keras.models.load_model, which cannot read a SavedModel
in Keras 3). It takes uint8 pixel arrays from `imaging.decode_image` and returns one
`(probability, class_name, scored_at)` per image: one signature call per batch, nothing per element.
RunInference keeps one loaded model per worker process, shared by its threads. A gs:// export is first
copied to a local temporary directory (storage.py; TensorFlow's own GCS filesystem does not honour
STORAGE_EMULATOR_HOST) and its checksums are verified on the copy that is loaded; the `files` keys are
checked before anything is copied, since they become local paths.

TensorFlow is imported only inside `load_model` / `run_inference`, so the launcher starts fast.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from trainer import model_contract, provenance, storage
from trainer.model_contract import LATEST, MODEL_INFO, SAVED_MODEL, ModelError, join

PIXELS_SIGNATURE = model_contract.SIGNATURES["pixels"]
KERAS_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")  # refused as --model: never deserialised by the scorer
_FIX = ("pass --model an export version directory written by trainer/export.py (it contains saved_model.pb and "
        "model_info.json), or an export root whose `latest` file names one; if the directory was copied by hand, "
        "copy it again completely")

_LOGGER = logging.getLogger(__name__)


class Prediction(NamedTuple):
    probability: float  # of class_names[1] (dog)
    class_name: str
    scored_at: str  # UTC, ISO 8601 with seconds; one stamp per batch


def _sha256(path: str) -> str | None:
    return storage.sha256(path) if storage.exists(path) else None


def read_model_info(model_dir: str, expected_sha256: str | None = None) -> dict:
    """model_info.json of an export directory, with its fields checked and, when the `latest` pointer that led
    here recorded one, its sha256 compared. Raises ModelError."""
    path = join(model_dir, MODEL_INFO)
    if not storage.exists(path):
        raise ModelError(f"{model_dir} has no {MODEL_INFO}: it is not a complete catsdogs export; {_FIX}")
    data = storage.read_bytes(path)  # read once: the bytes checked are the bytes parsed
    info = model_contract.parse_model_info(data, path, _FIX)
    if expected_sha256 is not None:
        actual = model_contract.sha256_bytes(data)
        if actual != expected_sha256:
            raise ModelError(f"{path} has sha256 {actual} but the `{LATEST}` pointer that names this version "
                             f"records {expected_sha256}: model_info.json was rewritten after the version was "
                             f"published (with the files it lists, or not). Do not score with it; publish the model "
                             f"again, or roll `{LATEST}` back to a version you trust (make rollback VERSION=...)")
    return info


def verify_files(model_dir: str, info: dict) -> None:
    """Every file listed in model_info.json exists under model_dir with the recorded sha256. Raises ModelError."""
    model_contract.verify_files(model_dir, info, _sha256, _FIX)


def check_model(model_dir: str, expected_sha256: str | None = None) -> dict:
    """read_model_info + verify_files."""
    info = read_model_info(model_dir, expected_sha256)
    verify_files(model_dir, info)
    return info


def resolve_model(model: str) -> tuple[str, str | None]:
    """(version directory, the sha256 of its model_info.json that `latest` records): a version directory given
    directly comes back as is with None; an export root is followed through its `latest` pointer."""
    model = model.rstrip("/")
    if storage.exists(join(model, SAVED_MODEL)):
        return model, None
    where = join(model, LATEST)
    if not storage.exists(where):
        raise ModelError(f"{model} is neither a model export (no {SAVED_MODEL}) nor an export root with a "
                         f"'{LATEST}' file; pass --model <model_dir>/export or --model <model_dir>/export/<version>")
    pointer = model_contract.parse_pointer(storage.read_bytes(where), where)
    if pointer.legacy:
        raise ModelError(f"{where} is in the old plain-text format: it names version {pointer.version} but not the "
                         f"sha256 of that version's {MODEL_INFO}, so the scorer cannot check the version is the one "
                         f"published. Rewrite it after verifying the version: python -m trainer.rollback to "
                         f"--export_dir {model} --version {pointer.version} (make rollback EXPORT_DIR={model} "
                         f"VERSION={pointer.version}); or pass --model {join(model, pointer.version)}")
    return join(model, pointer.version), pointer.model_info_sha256


def _under_prefix(path: str, prefix: str) -> bool:
    """Whether path is prefix or below it. Local paths are compared after resolving symlinks and `..`, so a link
    placed under the prefix does not let a model from elsewhere in."""
    if not storage.is_remote(prefix):
        prefix = os.path.realpath(prefix)
        path = path if storage.is_remote(path) else os.path.realpath(path)
    prefix = prefix.rstrip("/") + "/"
    return (path.rstrip("/") + "/").startswith(prefix)


def resolve_and_check_model(model: str, allowed_prefix: str | None) -> tuple[str, dict]:
    """The version directory to load and its verified model_info: what the scoring launcher runs before anything
    else. Raises ModelError saying what is wrong and what to do."""
    if allowed_prefix and not _under_prefix(model, allowed_prefix):
        raise ModelError(f"--model {model} is outside --allowed_model_prefix {allowed_prefix}; use a model "
                         f"published there")
    if model.rstrip("/").lower().endswith(KERAS_FILE_SUFFIXES):
        # Never handed to keras.models.load_model: a Keras file's Lambda layers carry Python bytecode.
        raise ModelError(f"--model {model} is a Keras file; the scorer loads only a SavedModel export (a version "
                         f"directory with saved_model.pb and model_info.json, or an export root with `latest`) as "
                         f"catsdogs-train writes it; export a Keras model of your own with "
                         f"trainer.export.export_model")
    resolved, expected_sha256 = resolve_model(model)
    if allowed_prefix and not _under_prefix(resolved, allowed_prefix):
        raise ModelError(f"{model}'s `latest` points outside --allowed_model_prefix {allowed_prefix} ({resolved})")
    try:
        info = check_model(resolved, expected_sha256)
    except ModelError as error:
        raise ModelError(f"model {resolved} refused: {error}") from None
    if expected_sha256 is not None and str(info["model_version"]) != resolved.rsplit("/", 1)[-1]:
        raise ModelError(f"model {resolved} refused: its {MODEL_INFO} says model_version {info['model_version']!r}: "
                         f"the directory holds a copy of another version; {_FIX}")
    return resolved, info


def lineage(info: dict) -> dict:
    """Where a scoring run's predictions come from: the model (name, version) and the dataset it was trained on
    (the dataset's version when its metadata.json records one, when it was finished and by which code)."""
    data = info.get("training_data") or {}
    return {
        "model_name": info["model_name"],
        "model_version": str(info["model_version"]),
        "model_created_at": info.get("created_at"),
        "model_code_version": info.get("code_version"),
        "dataset": {
            "version": data.get("version"),
            "finished_at": data.get("finished_at"),
            "code_version": data.get("code_version"),
        },
    }


def fetch_model(model_dir: str, info: dict) -> str:
    """A local directory holding the export: model_dir itself when local, else a verified temporary copy."""
    if not storage.is_remote(model_dir):
        verify_files(model_dir, info)
        return model_dir
    # The keys become local paths below: a key such as '../../x' would write outside the temporary directory.
    model_contract.check_files(info["files"], join(model_dir, MODEL_INFO), _FIX)
    local = tempfile.mkdtemp(prefix=f"catsdogs-model-{info['model_version']}-")
    try:
        for relative in info["files"]:
            storage.download(join(model_dir, relative), os.path.join(local, *relative.split("/")))
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
