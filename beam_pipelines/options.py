"""The two Beam jobs' settings: each flag declared once, each job's values in one frozen, validated config.

`JobConfig` holds what both jobs take (inputs, output, the per-file limits, the batch of files that is one runner
element), `PreprocessConfig` and `ScoreConfig` extend it; the defaults live in these dataclasses only, and the flags
(`JobOptions`, `PreprocessOptions`, `ScoreOptions`, one PipelineOptions subclass each, declared from the dataclass
fields) take their defaults from them. A bad value fails when the config is built, at launch, with a message saying
what to pass. Beam's own flags (--runner, --project, --region, --temp_location, --setup_file, --num_workers,
--direct_running_mode, --dask_client_address, ...) are not declared here: they pass through.

Nothing is `required=True`: Beam parses every PipelineOptions subclass's flags together when it ships options to
workers, so one job's required flag would break the other; each job's `config()` checks what is missing.
"""

import argparse
import dataclasses
import math
import re
import typing

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import imaging, listing
from trainer import features
from trainer.config import optional, parse_boolean

MIB = 2**20
FORMATS = ("jsonl", "csv", "parquet")


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _fields(cls) -> dict:
    return {field.name: field for field in dataclasses.fields(cls)}


def default(cls, name: str):
    field = _fields(cls)[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _problem(problems: list, ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def _setting(default, help_text: str, **flag):
    """A config field that is also a flag: its default, its --help line (what it does, its unit) and, where the
    field's type does not say it, how argparse reads it (`kind`, `flag` for another name, `action`, `choices`)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **flag})


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What both Beam jobs take."""

    inputs: tuple[str, ...] = _setting((), "folder (read recursively), file or glob (`**` works) of images, local "
                                           "or gs://; repeat for several", flag="input", action="append",
                                       metavar="PATH", required=True)
    output_dir: str = _setting("", "where the job writes (local path or gs://)", required=True,
                               metavar="PATH")
    max_pixels: int = _setting(imaging.DEFAULT_MAX_PIXELS, "images with more pixels than this are rejected "
                                                           "(too_many_pixels) before decoding; pixels")
    max_file_mb: int | None = _setting(None, "files larger than this are rejected (file_too_large) without being "
                                             "read; MiB (none: 3 bytes per pixel at --max_pixels)")
    decode_timeout_seconds: float = _setting(30.0, "each file is decoded in a child process and rejected "
                                                   "(decoder_timeout) after this long; 0 decodes in the worker "
                                                   "process, without isolation; seconds")
    files_per_batch: int = _setting(listing.DEFAULT_FILES_PER_BATCH, "files per unit of work: the runner handles "
                                                                     "one element per batch, and scoring commits per "
                                                                     "batch; files")
    check_only: bool = _setting(False, "check everything a run needs (flags, credentials, the inputs: counted, a few "
                                       "decoded; the output's write access; the model) and write nothing")

    @property
    def max_file_bytes(self) -> int:
        if self.max_file_mb is not None:
            return self.max_file_mb * MIB
        return math.ceil(3 * self.max_pixels / MIB) * MIB

    def problems(self) -> list[str]:
        problems = []
        _problem(problems, bool(self.inputs), "no --input given: pass a folder, glob or gs:// prefix of images, e.g. "
                                              "--input ../shared/data/pets-180 (repeat --input for several)")
        _problem(problems, bool(self.output_dir), "no --output_dir given: pass where the job writes its output")
        _problem(problems, self.max_pixels >= 64 * 64, f"--max_pixels must be at least 4096 (got {self.max_pixels})")
        _problem(problems, self.max_file_mb is None or self.max_file_mb >= 1,
                 f"--max_file_mb must be at least 1 (got {self.max_file_mb})")
        _problem(problems, 0.0 <= self.decode_timeout_seconds <= 3600,
                 f"--decode_timeout_seconds must be between 0 (decode in the worker process) and 3600 (got "
                 f"{self.decode_timeout_seconds:g})")
        _problem(problems, 1 <= self.files_per_batch <= 100_000,
                 f"--files_per_batch must be between 1 and 100000 (got {self.files_per_batch})")
        return problems

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessConfig(JobConfig):
    """The validated settings of one preprocessing run. `recorded()` is what metadata.json keeps as `options`."""

    class_names: tuple[str, ...] = _setting(features.DEFAULT_CLASS_NAMES, "class names, label 0 first; "
                                                                          "comma-separated", kind=_names,
                                            metavar="NAMES")
    label_from: str = _setting("folder", "folder: the nearest parent folder naming a class (cat/, Dogs/); prefix: the "
                                         "file name's first word (cat.123.jpg)", choices=("folder", "prefix"))
    image_size: int = _setting(features.DEFAULT_IMAGE_SIZE, "stored images are squashed to SIZE x SIZE; pixels")
    split_ratios: tuple[float, float, float] = _setting((0.8, 0.1, 0.1), "train,validation,test fractions summing "
                                                                         "to 1", kind=_ratios, metavar="A,B,C")
    near_duplicate_bits: int = _setting(4, "photos whose 64-bit perceptual hashes differ in at most this many bits "
                                           "stay in one split (0: identical hashes only); bits")
    link_rounds: int = _setting(4, "label-propagation rounds joining chains of near-copies; longer chains are "
                                   "reported as unconverged")
    max_rejected_fraction: float = _setting(0.5, "fail (exit 1, no new version published) when more than this "
                                                 "fraction of the files is rejected")
    overwrite: bool = _setting(False, "build a new dataset version from scratch, ignoring the current one (splits "
                                      "may change)")
    skip_if_current: bool = _setting(False, "when --output_dir holds a dataset made with the same options, add what "
                                            "changed in the inputs as a new version (exit 0 without one when nothing "
                                            "changed)")

    def problems(self) -> list[str]:
        problems = super().problems()
        try:
            features.validate_class_names(self.class_names)
        except ValueError as error:
            problems.append(str(error))
        _problem(problems, self.label_from in ("folder", "prefix"),
                 f"--label_from must be folder or prefix (got {self.label_from!r})")
        _problem(problems, 8 <= self.image_size <= 4096,
                 f"--image_size must be between 8 and 4096 pixels (got {self.image_size})")
        _problem(problems, self.max_pixels >= self.image_size ** 2,
                 f"--max_pixels {self.max_pixels} is below one {self.image_size}x{self.image_size} image")
        ratios = self.split_ratios
        _problem(problems, len(ratios) == 3 and all(math.isfinite(r) and r >= 0 for r in ratios)
                 and abs(sum(ratios) - 1) <= 1e-6,
                 f"--split_ratios must be three non-negative numbers (train,validation,test) summing to 1, e.g. "
                 f"0.8,0.1,0.1 (got {','.join(map(str, ratios))})")
        _problem(problems, 0 <= self.near_duplicate_bits <= 8,
                 f"--near_duplicate_bits must be between 0 and 8 (got {self.near_duplicate_bits}); unrelated photos "
                 f"are about 32 bits apart")
        _problem(problems, 2 <= self.link_rounds <= 20, f"--link_rounds must be between 2 and 20 (got "
                                                        f"{self.link_rounds})")
        _problem(problems, 0.0 <= self.max_rejected_fraction <= 1.0,
                 f"--max_rejected_fraction must be between 0 and 1 (0.5 means half the files; got "
                 f"{self.max_rejected_fraction})")
        return problems

    @property
    def size(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def recorded(self) -> dict:
        """The options that decide the dataset's content: a dataset is only extended with the same ones."""
        return {"class_names": list(self.class_names), "label_from": self.label_from, "image_size": self.image_size,
                "max_pixels": self.max_pixels, "split_ratios": list(self.split_ratios),
                "near_duplicate_bits": self.near_duplicate_bits, "link_rounds": self.link_rounds}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreConfig(JobConfig):
    """The validated settings of one scoring run."""

    model: str = _setting("", "export version directory, or an export root whose `latest` names one (local or "
                              "gs://)", required=True, metavar="PATH")
    run_id: str = _setting("", "this run's directory under --output_dir; re-running a run id resumes it if it was "
                               "interrupted, else replaces it (none: the UTC launch time, e.g. 20261125T104500Z)")
    format: str = _setting("jsonl", "predictions file format", choices=FORMATS)
    skip_scored: tuple[str, ...] = _setting((), "output directory of earlier runs (repeatable): files they already "
                                                "scored with the same model version are skipped (counted as "
                                                "skipped); the scoring CronJob passes its own --output_dir",
                                            action="append", metavar="PATH")
    allowed_model_prefix: str | None = _setting(None, "refuse a model (or a `latest` pointer) outside this folder or "
                                                      "gs:// prefix; local paths are compared after resolving symlinks")
    max_batch_size: int = _setting(64, "images per model call; images")
    max_error_rate: float = _setting(0.5, "fail the run (exit 1, outputs kept) when more than this fraction of the "
                                          "files it attempted are rejected")
    intra_op_threads: int = _setting(0, "TensorFlow threads per worker process (0: the CPUs divided by "
                                        "--direct_num_workers on the DirectRunner, TensorFlow's choice elsewhere)")
    share_model_across_processes: bool = _setting(False, "load one model per machine, shared by its worker processes "
                                                         "(for large models)")
    incremental_margin_minutes: float = _setting(15.0, "with --skip_scored, files that appeared this long before a "
                                                       "run's start are checked one by one instead of by time (covers "
                                                       "clock skew); minutes")
    drift_threshold: float = _setting(0.2, "warn when a class's share of this run differs from the previous run's by "
                                           "more than this; fraction")

    def problems(self) -> list[str]:
        problems = super().problems()
        _problem(problems, bool(self.model), "no --model given: pass an export version directory, or an export root "
                                             "whose `latest` names one, e.g. --model work/model/export")
        _problem(problems, not self.run_id or bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_id)),
                 f"--run_id must use letters, digits, '.', '_' and '-' only (got {self.run_id!r})")
        _problem(problems, self.format in FORMATS, f"--format must be one of {', '.join(FORMATS)} (got "
                                                   f"{self.format!r})")
        _problem(problems, 1 <= self.max_batch_size <= 4096,
                 f"--max_batch_size must be between 1 and 4096 images (got {self.max_batch_size})")
        _problem(problems, 0.0 <= self.max_error_rate <= 1.0,
                 f"--max_error_rate must be a fraction between 0 and 1 (0.5 means 50%; got {self.max_error_rate})")
        _problem(problems, self.intra_op_threads >= 0, f"--intra_op_threads must be >= 0 (got "
                                                       f"{self.intra_op_threads})")
        _problem(problems, 0 <= self.incremental_margin_minutes <= 24 * 60,
                 f"--incremental_margin_minutes must be between 0 and 1440 (got {self.incremental_margin_minutes})")
        _problem(problems, 0 < self.drift_threshold <= 1,
                 f"--drift_threshold must be in (0, 1] (got {self.drift_threshold})")
        return problems


# ---- flags --------------------------------------------------------------------------------------------------------

def _kind(field: dataclasses.Field):
    """How argparse reads a field's flag: its `kind`, else from the field's type (an optional type may be `none`)."""
    if "kind" in field.metadata:
        return field.metadata["kind"]
    kinds = [kind for kind in typing.get_args(field.type) if kind is not type(None)] or [field.type]
    kind = {int: int, float: float, str: None, bool: parse_boolean}[kinds[0]]
    return optional(kind) if kind and type(None) in typing.get_args(field.type) else kind


def _add_flags(parser, title: str, cls, inherited=None) -> None:
    """Declares one flag per field of `cls` (not those of `inherited`), its default taken from the field."""
    group = parser.add_argument_group(title)
    skip = set(_fields(inherited)) if inherited else set()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        extra = {key: value for key, value in field.metadata.items() if key not in ("help", "kind", "flag", "required")}
        value, kind = default(cls, field.name), _kind(field)
        if field.metadata.get("required"):
            shown = "required"
        elif isinstance(value, tuple):
            shown = "default: " + (",".join(map(str, value)) or "none")
        else:
            shown = "default: " + {None: "none", True: "true", False: "false", "": "none"}.get(value, str(value))
        if kind is parse_boolean:
            extra.update(nargs="?", const=True, metavar="true|false")
        elif "choices" not in extra:
            base = kind.__name__ if kind else "str"
            extra.setdefault("metavar", {"int": "INT", "float": "FLOAT"}.get(base, "TEXT"))
        if extra.get("action") == "append":
            value = None  # argparse appends to its default: the field's () is restored in config_values
        group.add_argument(f"--{field.metadata.get('flag', field.name)}", dest=field.name, default=value, type=kind,
                           help=f"{field.metadata['help']} ({shown})", **extra)


def config_values(options: PipelineOptions, cls) -> dict:
    """The parsed values of `cls`'s fields, ready for cls(**values)."""
    parsed = options.get_all_options()
    values = {}
    for field in dataclasses.fields(cls):
        value = parsed.get(field.name)
        if field.metadata.get("action") == "append":
            value = tuple(value or ())
        values[field.name] = default(cls, field.name) if value is None and field.default is not None else value
    return values


class JobOptions(PipelineOptions):
    """Flags both Beam jobs take."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, "inputs, output and per-file limits (both jobs)", JobConfig)


class PreprocessOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.preprocess` only (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, "preprocessing", PreprocessConfig, inherited=JobConfig)


class ScoreOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.score` only (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _add_flags(parser, "scoring", ScoreConfig, inherited=JobConfig)


def preprocess_config(options: PipelineOptions) -> PreprocessConfig:
    """Raises ValueError with every problem found."""
    return PreprocessConfig(**config_values(options, PreprocessConfig))


def score_config(options: PipelineOptions) -> ScoreConfig:
    """Raises ValueError with every problem found."""
    return ScoreConfig(**config_values(options, ScoreConfig))
