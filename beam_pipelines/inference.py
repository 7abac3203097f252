"""Scoring's data path for one batch of files: read, decode and classify, with per-file outcomes.

`FilesModelHandler` is a Beam `ModelHandler` whose element is a whole `listing.FileBatch` (RunInference runs it
`with_no_batching()`: the listing already batched the files, so the runner handles one element per batch, not one per
image). RunInference keeps owning what it is good at: loading the model once per worker process (or once per machine
with --share_model_across_processes), and the inference metrics. `run_inference` returns one `BatchOutcome` per
batch:

    files --reading.decoded--> pixels (child process, files read ahead in threads)
          --model.predict on --max_batch_size images at a time--> probability of the positive class per file

while the model runs on one batch of pixels (TensorFlow releases the GIL), the feeder thread keeps the decoder child
busy with the next files, so decoding overlaps inference. A file that cannot be read or decoded becomes a rejection
with its reason; it never costs the other files of its batch.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_pipelines import isolation, listing, model_handler, reading
from trainer import provenance

READ_THREADS = reading.READ_THREADS
_PIXELS_FN = "beam_pipelines.imaging:pixels_of"  # only the pixels come back from the decoder child


@dataclasses.dataclass
class BatchOutcome:
    """What became of each file of a batch: `scored` as (ref, probability of class_names[1]), `rejected` as
    (ref, reason, detail). `scored_at` is one UTC stamp per batch."""

    batch: listing.FileBatch
    scored: list
    rejected: list
    scored_at: str
    started: float = 0.0  # time.time() when the batch's first file was sent to the decoder, and when the last
    finished: float = 0.0  # prediction came back: the job's rate after start-up comes from these


class FilesModelHandler(ModelHandler[listing.FileBatch, BatchOutcome, Any]):
    """FileBatch -> [BatchOutcome], through the export's `serve_pixels` signature (model_handler.PixelsModelHandler
    loads it)."""

    def __init__(self, model_dir: str, model_info: dict, *, max_batch_size: int, max_file_bytes: int,
                 max_pixels: int, decode_timeout: float, intra_op_threads: int = 0, inter_op_threads: int = 0,
                 large_model: bool = False):
        super().__init__()
        self._pixels = model_handler.PixelsModelHandler(
            model_dir, model_info, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
            large_model=large_model)
        self._size = tuple(model_info["input_size"])
        self._max_batch_size = max_batch_size
        self._max_file_bytes = max_file_bytes
        self._max_pixels = max_pixels
        self._decode_timeout = decode_timeout
        self._resources_made = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_resources_made"] = None  # threads, pipes and child processes stay where they were made
        return state

    def load_model(self):
        return self._pixels.load_model()

    def share_model_across_processes(self) -> bool:
        return self._pixels.share_model_across_processes()

    def _decoding(self) -> reading.Decoding:
        """The decoder child and read threads, made on first use. A handler is unpickled per DoFn instance, which
        runs one bundle at a time, so this needs no lock."""
        if self._resources_made is None:
            self._resources_made = reading.Decoding(
                1, self._decode_timeout, _PIXELS_FN, isolation.memory_limit(self._max_pixels, self._max_file_bytes))
        return self._resources_made

    def run_inference(self, batch: listing.FileBatch, model, inference_args=None) -> Sequence[BatchOutcome]:
        scored, rejected, pending = [], [], []
        started = time.time()
        outcomes = self._decoding().decoded(batch.files, size=self._size, max_pixels=self._max_pixels,
                                            max_bytes=self._max_file_bytes)
        for ref, outcome in outcomes:
            if outcome[0] == "rejected":
                rejected.append((ref, outcome[1], outcome[2]))
                continue
            pending.append((ref, outcome[1]))
            if len(pending) == self._max_batch_size:
                scored += self._predict(pending, model)
                pending = []
        if pending:
            scored += self._predict(pending, model)
        return [BatchOutcome(batch, scored, rejected, provenance.utc_now(), started, time.time())]

    @staticmethod
    def _predict(pending, model) -> list:
        probabilities, _ = model.predict(np.stack([pixels for _, pixels in pending]))
        return [(ref, probability) for (ref, _), probability in zip(pending, probabilities, strict=True)]

    def get_num_bytes(self, batch: listing.FileBatch) -> int:
        return len(batch.packed)  # what RunInference moved; the files' own sizes are read, not moved

    def get_metrics_namespace(self) -> str:
        return "catsdogs.score.inference"
