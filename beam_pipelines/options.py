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

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import imaging, listing
from trainer import features

MIB = 2**20


def _fields(cls) -> dict:
    return {field.name: field for field in dataclasses.fields(cls)}


def default(cls, name: str):
    field = _fields(cls)[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _problem(problems: list, ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What both Beam jobs take."""

    inputs: tuple[str, ...] = ()
    output_dir: str = ""
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS
    max_file_mb: int | None = None  # None: 3 bytes per pixel at max_pixels (an uncompressed RGB image at the limit)
    decode_timeout_seconds: float = 30.0
    files_per_batch: int = listing.DEFAULT_FILES_PER_BATCH
    check_only: bool = False  # validate flags, credentials, inputs, output and model; write nothing

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

    class_names: tuple[str, ...] = features.DEFAULT_CLASS_NAMES
    label_from: str = "folder"
    image_size: int = features.DEFAULT_IMAGE_SIZE
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    near_duplicate_bits: int = 4
    link_rounds: int = 4
    max_rejected_fraction: float = 0.5
    overwrite: bool = False
    skip_if_current: bool = False

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


FORMATS = ("jsonl", "csv", "parquet")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreConfig(JobConfig):
    """The validated settings of one scoring run."""

    model: str = ""
    run_id: str = ""  # empty: the UTC launch time, set by score.run
    format: str = "jsonl"
    skip_scored: tuple[str, ...] = ()
    allowed_model_prefix: str | None = None
    max_batch_size: int = 64
    max_error_rate: float = 0.5
    intra_op_threads: int = 0
    share_model_across_processes: bool = False
    incremental_margin_minutes: float = 15.0
    drift_threshold: float = 0.2

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

def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag(group, cls, name: str, help_text: str, *, flag: str | None = None, kind=None, **extra) -> None:
    """Declares --<flag or name> with the config field's default, shown in the help with its unit."""
    value = default(cls, name)
    shown = {None: "none", True: "true", False: "false", (): "none"}.get(value, value) \
        if not isinstance(value, tuple) or not value else ",".join(map(str, value))
    if kind is _boolean:
        extra.setdefault("nargs", "?")
        extra.setdefault("const", True)
        extra.setdefault("metavar", "true|false")
    group.add_argument(f"--{flag or name}", dest=name, default=value, type=kind,
                       help=f"{help_text} (default: {shown})", **extra)


class JobOptions(PipelineOptions):
    """Flags both Beam jobs take."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("inputs, output and per-file limits (both jobs)")
        group.add_argument("--input", dest="inputs", action="append", default=None,
                           help="folder (read recursively), file or glob (`**` works) of images, local or gs://; "
                                "repeat for several")
        group.add_argument("--output_dir", default=None, help="where the job writes (local path or gs://)")
        _flag(group, JobConfig, "max_pixels", "images with more pixels than this are rejected (too_many_pixels) "
                                              "before decoding; pixels", kind=int)
        _flag(group, JobConfig, "max_file_mb", "files larger than this are rejected (file_too_large) without being "
                                               "read; MiB (none: 3 bytes per pixel at --max_pixels)", kind=int)
        _flag(group, JobConfig, "decode_timeout_seconds", "each file is decoded in a child process and rejected "
                                                          "(decoder_timeout) after this long; 0 decodes in the worker "
                                                          "process, without isolation; seconds", kind=float)
        _flag(group, JobConfig, "files_per_batch", "files per unit of work: the runner handles one element per "
                                                   "batch, and scoring commits per batch; files", kind=int)
        _flag(group, JobConfig, "check_only", "check everything a run needs (flags, credentials, the inputs: counted, "
                                              "a few decoded; the output's write access; the model) and write "
                                              "nothing", kind=_boolean)


class PreprocessOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.preprocess` only (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("preprocessing")
        _flag(group, PreprocessConfig, "label_from", "folder: the nearest parent folder naming a class (cat/, "
                                                     "Dogs/); prefix: the file name's first word (cat.123.jpg)",
              choices=("folder", "prefix"))
        _flag(group, PreprocessConfig, "class_names", "class names, label 0 first; comma-separated",
              kind=lambda text: tuple(n.strip() for n in text.split(",") if n.strip()))
        _flag(group, PreprocessConfig, "image_size", "stored images are squashed to SIZE x SIZE; pixels", kind=int)
        _flag(group, PreprocessConfig, "split_ratios", "train,validation,test fractions summing to 1",
              kind=_ratios)
        _flag(group, PreprocessConfig, "near_duplicate_bits", "photos whose 64-bit perceptual hashes differ in at "
                                                              "most this many bits stay in one split (0: identical "
                                                              "hashes only); bits", kind=int)
        _flag(group, PreprocessConfig, "link_rounds", "label-propagation rounds joining chains of near-copies; "
                                                      "longer chains are reported as unconverged", kind=int)
        _flag(group, PreprocessConfig, "max_rejected_fraction", "fail (exit 1, no new version published) when more "
                                                                "than this fraction of the files is rejected",
              kind=float)
        _flag(group, PreprocessConfig, "overwrite", "build a new dataset version from scratch, ignoring the "
                                                    "current one (splits may change)", kind=_boolean)
        _flag(group, PreprocessConfig, "skip_if_current", "when --output_dir holds a dataset made with the same "
                                                          "options, add what changed in the inputs as a new version "
                                                          "(exit 0 without one when nothing changed)", kind=_boolean)


class ScoreOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.score` only (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("scoring")
        group.add_argument("--model", default=None, help="export version directory, or an export root whose "
                                                         "`latest` names one (local or gs://); required")
        _flag(group, ScoreConfig, "run_id", "this run's directory under --output_dir; re-running a run id resumes "
                                            "it if it was interrupted, else replaces it (default: UTC launch time, "
                                            "e.g. 20261125T104500Z)")
        _flag(group, ScoreConfig, "format", "predictions file format", choices=FORMATS)
        group.add_argument("--skip_scored", action="append", default=None,
                           help="output directory of earlier runs (repeatable): files they already scored with the "
                                "same model version are skipped (counted as skipped); the scoring CronJob passes its "
                                "own --output_dir")
        _flag(group, ScoreConfig, "allowed_model_prefix", "refuse a model (or a `latest` pointer) outside this "
                                                          "folder or gs:// prefix; local paths are compared after "
                                                          "resolving symlinks")
        _flag(group, ScoreConfig, "max_batch_size", "images per model call; images", kind=int)
        _flag(group, ScoreConfig, "max_error_rate", "fail the run (exit 1, outputs kept) when more than this "
                                                    "fraction of the files it attempted are rejected", kind=float)
        _flag(group, ScoreConfig, "intra_op_threads", "TensorFlow threads per worker process (0: the CPUs divided by "
                                                      "--direct_num_workers on the DirectRunner, TensorFlow's choice "
                                                      "elsewhere)", kind=int)
        _flag(group, ScoreConfig, "share_model_across_processes", "load one model per machine, shared by its worker "
                                                                  "processes (for large models)", kind=_boolean)
        _flag(group, ScoreConfig, "incremental_margin_minutes", "with --skip_scored, files that appeared this long "
                                                                "before a run's start are checked one by one "
                                                                "instead of by time (covers clock skew); minutes",
              kind=float)
        _flag(group, ScoreConfig, "drift_threshold", "warn when a class's share of this run differs from the "
                                                     "previous run's by more than this; fraction", kind=float)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None


def _job_values(options: PipelineOptions) -> dict:
    job = options.view_as(JobOptions)
    inputs = tuple(job.inputs or ())
    return {"inputs": inputs, "output_dir": job.output_dir or "", "max_pixels": job.max_pixels,
            "max_file_mb": job.max_file_mb, "decode_timeout_seconds": job.decode_timeout_seconds,
            "files_per_batch": job.files_per_batch, "check_only": job.check_only}


def _own_values(options: PipelineOptions, view, cls) -> dict:
    values = options.view_as(view).get_all_options(current_only=True)
    names = set(_fields(cls)) - set(_fields(JobConfig))
    return {name: values[name] for name in names if name in values}


def preprocess_config(options: PipelineOptions) -> PreprocessConfig:
    """Raises ValueError with every problem found."""
    return PreprocessConfig(**_job_values(options), **_own_values(options, PreprocessOptions, PreprocessConfig))


def score_config(options: PipelineOptions) -> ScoreConfig:
    """Raises ValueError with every problem found."""
    own = _own_values(options, ScoreOptions, ScoreConfig)
    own["skip_scored"] = tuple(own.get("skip_scored") or ())
    own["model"] = own.get("model") or ""
    own["run_id"] = own.get("run_id") or ""
    return ScoreConfig(**_job_values(options), **own)
