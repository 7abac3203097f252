"""Command-line options of the two Beam pipelines: one PipelineOptions subclass per pipeline.

Beam's own flags (--runner, --project, --region, --temp_location, --setup_file, --num_workers,
--direct_running_mode, --dask_client_address, ...) are not re-declared here: they pass through.
"""

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.imaging import DEFAULT_MAX_PIXELS
from beam_pipelines.isolation import DEFAULT_DECODE_FN
from trainer.features import DEFAULT_CLASS_NAMES, DEFAULT_IMAGE_SIZE


class PreprocessOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.preprocess` (see its --help).

    Nothing here is `required=True`: Beam parses every PipelineOptions subclass's flags together when it
    serialises options for workers, so a required preprocessing flag would break the scoring job (and the
    other way round). `preprocess.run` checks for missing values instead and says what to pass.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        _resolve_shared_flags(parser)
        group = parser.add_argument_group("catsdogs preprocessing")
        group.add_argument("--input", action="append", default=None,
                           help="folder or glob (`**` works), local or gs://, read recursively; repeat for several")
        group.add_argument("--output_dir", default=None,
                           help="dataset directory: TFRecord shards, rejected-*.jsonl and metadata.json (local or gs://)")
        group.add_argument("--label_from", choices=("folder", "prefix"), default="folder",
                           help="folder: the nearest parent folder naming a class (cat/, Dogs/); "
                                "prefix: the file name's first word (cat.123.jpg, dog_7.png). Default folder")
        group.add_argument("--class_names", default=",".join(DEFAULT_CLASS_NAMES),
                           help="comma-separated class names, label 0 first (default cat,dog)")
        group.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                           help=f"stored images are squashed to SIZE x SIZE pixels (default {DEFAULT_IMAGE_SIZE})")
        group.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                           help=f"reject images larger than this many pixels (default {DEFAULT_MAX_PIXELS:,})")
        group.add_argument("--split_ratios", default="0.8,0.1,0.1",
                           help="train,validation,test fractions summing to 1 (default 0.8,0.1,0.1)")
        group.add_argument("--near_duplicate_bits", type=int, default=4,
                           help="photos whose 64-bit perceptual hashes differ in at most this many bits are "
                                "kept in one split (default 4; 0 groups only identical hashes)")
        group.add_argument("--link_rounds", type=int, default=4,
                           help="label-propagation rounds joining near-duplicate chains; chains longer than "
                                "this many hops are reported as unconverged (default 4)")
        group.add_argument("--num_shards", type=int, default=0,
                           help="TFRecord shards per split (default 0: about 150 MB per shard, at least 1)")
        group.add_argument("--overwrite", action="store_true",
                           help="replace an existing dataset in --output_dir")
        group.add_argument("--skip_if_current", action="store_true",
                           help="exit 0 without work when --output_dir holds a dataset made from the same "
                                "inputs and options")
        group.add_argument("--max_rejected_fraction", type=float, default=0.5,
                           help="fail the job (exit 1, no dataset written, rejection list kept in "
                                "<output_dir>.failed-*) when more than this fraction of the files is rejected "
                                "(default 0.5)")
        _add_decoder_flags(group)
        group.add_argument("--read_fn", default=None,
                           help="file reader as module:function (default: beam_pipelines.storage.read_bytes); "
                                "for fault-injection tests")


class ScoreOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.score` (see its --help). --model, --input and --output_dir are needed but
    not `required=True` (see PreprocessOptions): `score.run` checks them and says what to pass."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _resolve_shared_flags(parser)
        group = parser.add_argument_group("catsdogs scoring")
        group.add_argument("--model", default=None,
                           help="(required) export version directory, or an export root whose `latest` names one "
                                "(local or gs://)")
        group.add_argument("--input", action="append", default=None,
                           help="(required) folder or glob of images, local or gs://, read recursively; repeat for "
                                "several")
        group.add_argument("--output_dir", default=None, help="(required) runs are written to <output_dir>/<run_id>/")
        group.add_argument("--run_id", default=None, type=_run_id,
                           help="name of this run's directory (default: UTC launch time, e.g. 20261125T104500Z); "
                                "re-running a run id replaces that run's output")
        group.add_argument("--format", default="jsonl", choices=("jsonl", "csv"),
                           help="predictions file format (default jsonl; csv has a header row)")
        group.add_argument("--skip_scored", action="append", default=None,
                           help="previous output dir, run dir or glob of prediction files: files already scored "
                                "there by the same model version are skipped (counted as `skipped`); repeatable")
        group.add_argument("--allowed_model_prefix", default=None,
                           help="refuse a model (or a `latest` pointer) outside this directory or gs:// prefix; "
                                "local paths are compared after resolving symlinks")
        group.add_argument("--min_batch_size", type=_positive_int, default=32,
                           help="smallest batch RunInference sends to the model (default 32)")
        group.add_argument("--max_batch_size", type=_positive_int, default=128,
                           help="largest batch RunInference sends to the model (default 128)")
        group.add_argument("--max_error_rate", type=_rate, default=0.5,
                           help="fail the job (exit 1, outputs kept) when more than this fraction of the files "
                                "attempted in this run (skipped ones aside) are rejected (default 0.5)")
        group.add_argument("--max_file_mb", type=_positive_int, default=64,
                           help="files larger than this are rejected as file_too_large without being read (default 64)")
        _add_decoder_flags(group)
        group.add_argument("--num_shards", type=int, default=0,
                           help="number of prediction and error files (default 0: the runner decides)")
        group.add_argument("--intra_op_threads", type=int, default=0,
                           help="TensorFlow intra-op threads per worker process (default 0: CPUs divided by "
                                "--direct_num_workers on the DirectRunner, TensorFlow's choice elsewhere)")
        group.add_argument("--share_model_across_processes", action="store_true",
                           help="load one model per machine, shared by all worker processes (for large models; "
                                "each batch then crosses a process boundary)")


def _add_decoder_flags(group) -> None:
    """--decode_timeout_seconds and --decode_fn, the same in both pipelines (beam_pipelines/isolation.py)."""
    group.add_argument("--decode_timeout_seconds", type=float, default=30.0,
                       help="decode each file in a child process and reject it as decoder_timeout after this many "
                            "seconds (decoder_crash if the decoder dies); 0 decodes in the worker process, without "
                            "isolation (default 30)")
    group.add_argument("--decode_fn", default=DEFAULT_DECODE_FN,
                       help=f"decoder as module:function (default {DEFAULT_DECODE_FN}); other values are for "
                            f"fault-injection tests")


def _resolve_shared_flags(parser) -> None:
    """Both pipelines declare --input, --output_dir, --num_shards and the decoder flags. Beam's get_all_options()
    (every runner calls it to ship options to workers) adds every PipelineOptions subclass to one parser: there the
    later declaration replaces the earlier one instead of raising "conflicting option string". Set before any group
    is added, since argparse copies the handler into each group when it is created."""
    parser.conflict_handler = "resolve"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.5 means 50%), got {text!r}")
    return value


def _run_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"use letters, digits, '.', '_' and '-' only (no '/'), got {text!r}")
    return text
