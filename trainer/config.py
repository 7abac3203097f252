"""The trainer's configuration: one frozen dataclass, validated when it is built, mapped one-to-one onto CLI flags.

Bad values fail at launch with a message saying what to do, not an hour into a run on a worker. The resolved
config (these fields plus what was derived at run time: replicas, global batch, learning rate, ...) is written to
<model_dir>/config.json by every run; a restart with the same config resumes, a different one is refused.
"""

import argparse
import dataclasses
import difflib
import typing

SEED_CNN = "seed_cnn"
RESNET_LITE = "resnet_lite"
# keras.applications backbones: name -> (constructor in keras.applications, pixel scaling the ImageNet weights expect)
APPLICATIONS = {
    "efficientnet_b0": ("EfficientNetB0", "raw"),  # the network rescales 0-255 itself
    "mobilenet_v3_small": ("MobileNetV3Small", "raw"),  # include_preprocessing=True: rescales 0-255 itself
    "resnet50_v2": ("ResNet50V2", "minus_one_to_one"),
}
# resnet_lite's default working side, and the side its training starts from (progressive resizing): most steps run
# at 96x96, ~2.8x cheaper than 160x160, and the network ends at 160 (docs/TRAINING.md, "Progressive resizing").
DEFAULT_INPUT_SIZE = 160
DEFAULT_PROGRESSIVE_FROM = 96
MODELS = (RESNET_LITE, SEED_CNN, *APPLICATIONS)
MIXED_PRECISION = ("auto", "on", "off")
LOG_FORMATS = ("text", "json")
RUN_ONLY = ("check_only", "log_format")
CACHE = ("auto", "on", "off")
LR_DECAYS = ("cosine", "linear")  # the learning rate's decay from the peak to 0 (schedules.decayed)
TTA = ("none", "flip")  # test-time augmentation of the export: "flip" averages the photo and its mirror image


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: str
    model_dir: str
    model: str = RESNET_LITE
    # The defaults are the CPU schedule `make train` documents: resnet_lite (width 32, depth 1) trained from 96x96 up
    # to 160x160 under a time budget; 60 epochs is a cap the hour does not reach on 2 cores (docs/TRAINING.md).
    epochs: int = 60
    batch_size: int = 64  # per replica; the global batch is batch_size x replicas
    learning_rate: float = 2e-3  # peak rate for one replica at batch_size; scaled linearly with the replica count
    warmup_epochs: float = 1.0
    lr_decay: str = "cosine"  # after the warm-up: cosine or linear decay to 0 (at the budget's end, else --epochs')
    weight_decay: float = 0.05  # AdamW; seed_cnn keeps the original recipe's plain Adam
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # mixup of the training batches, Beta(alpha, alpha) weights; 0: off
    cutmix_alpha: float = 0.0  # cutmix of the training batches, Beta(alpha, alpha) areas; 0: off
    ema_momentum: float = 0.0  # exponential moving average of the weights per step; 0: off
    width: int = 32  # resnet_lite: filters of the first stage, doubled at each later stage
    # resnet_lite: residual blocks per stage. 1 since 2026-12-05: it ties depth 2 on validation over an hour, costs
    # 0.6x the training work per photo, scores 1.6x as fast and loses the least in 40 minutes (docs/TRAINING.md).
    depth: int = 1
    input_size: int | None = None  # side the network sees; None: 160 for resnet_lite (capped), else the dataset's
    eval_input_size: int | None = None  # side at evaluation and in the export; None: the training side
    # Progressive resizing: training starts at this side and grows to the network side (schedules.progressive_side);
    # None: DEFAULT_PROGRESSIVE_FROM for resnet_lite when its side is larger, else off; 0: off
    progressive_resize_from: int | None = None
    tta: str = "none"  # test-time augmentation in evaluation and in the export (TTA)
    stages: int = 4  # resnet_lite: stages, each halving the resolution
    dropout: float = 0.2  # before the classifier (resnet_lite and backbones)
    augment: bool = True
    augment_strength: float = 1.0  # scales the zoom, rotation and colour ranges of --augment (flips stay)
    weights: str | None = None  # keras.applications weights file (local or gs://), e.g. efficientnetb0_notop.h5
    # Fine-tuning a backbone: epochs that train the new head alone (None: 2 with --weights, else 0), then the whole
    # network at --learning_rate x fine_tune_factor, cosine to 0.
    freeze_backbone_epochs: int | None = None
    fine_tune_factor: float = 0.1
    mixed_precision: str = "auto"  # auto: float16 on GPUs, bfloat16 on CPUs with AMX, else off (distribute.py)
    time_budget_minutes: float | None = None  # stop training gracefully after this much training time
    steps_per_epoch: int | None = None  # cap on steps per epoch (default: one pass over the training split)
    early_stopping_patience: int = 5  # epochs without validation-loss improvement before stopping; 0: never
    backup_every_steps: int = 100  # fault-tolerance backup frequency (and at every epoch end and on SIGTERM)
    worker_timeout_minutes: float = 5.0  # multi-worker: exit 5 when no step finishes this long (a peer is lost)
    shuffle_buffer: int = 2048
    cache: str = "auto"  # decoded training/validation images in memory: auto when they fit in cache_limit_mb
    cache_limit_mb: int = 2048
    seed: int = 42
    # The promotion gate (trainer/promotion.py): the export becomes `latest`, which scoring follows, only when blessed.
    export_dir: str | None = None  # export root, local or gs:// (default <model_dir>/export)
    min_accuracy: float = 0.8  # on the test split; 0 turns the check off
    min_roc_auc: float = 0.85
    max_regression: float = 0.01  # how far below the current latest's accuracy and ROC AUC the new model may be
    force_publish: bool = False
    # How this invocation runs, not what it trains: left out of config.json's comparison (to_dict).
    check_only: bool = False  # check the config, the dataset (records counted), the output folders; train nothing
    log_format: str = "text"  # text, or json: one object per line with severity, message, job (Cloud Logging)

    def __post_init__(self):
        problems = []

        def need(ok, message):
            if not ok:
                problems.append(message)

        need(bool(self.data_dir), "--data_dir is required: the preprocessed dataset (local path or gs://)")
        need(bool(self.model_dir), "--model_dir is required: where checkpoints, logs, metrics and the export go")
        need(self.model in MODELS, f"--model {self.model!r} is unknown; choose one of {', '.join(MODELS)}")
        need(_is_int(self.epochs) and self.epochs >= 1, f"--epochs must be an integer >= 1 (got {self.epochs!r})")
        need(_is_int(self.batch_size) and 1 <= self.batch_size <= 4096,
             f"--batch_size (per replica) must be an integer in 1..4096 (got {self.batch_size!r})")
        need(_is_number(self.learning_rate) and 0 < self.learning_rate <= 1,
             f"--learning_rate must be in (0, 1] (got {self.learning_rate!r}); 1e-3 suits Adam")
        epochs_ok = _is_int(self.epochs)
        epochs = self.epochs if epochs_ok else 1
        need(_is_number(self.warmup_epochs) and 0 <= self.warmup_epochs <= epochs,
             f"--warmup_epochs must be between 0 and --epochs ({self.epochs}) (got {self.warmup_epochs!r})")
        need(self.lr_decay in LR_DECAYS, f"--lr_decay must be one of {', '.join(LR_DECAYS)} (got {self.lr_decay!r})")
        need(self.lr_decay == "cosine" or not epochs_ok or self.head_only_epochs() == 0,
             "--lr_decay linear does not apply to fine-tuning a backbone (its schedule is cosine); leave it out")
        need(_is_number(self.weight_decay) and 0 <= self.weight_decay < 1,
             f"--weight_decay must be in [0, 1) (got {self.weight_decay!r})")
        need(_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 0.5,
             f"--label_smoothing must be in [0, 0.5) (got {self.label_smoothing!r})")
        need(_is_number(self.mixup_alpha) and 0 <= self.mixup_alpha <= 10,
             f"--mixup_alpha must be in [0, 10] (got {self.mixup_alpha!r}); 0.2 is the usual value, 0 turns it off")
        need(_is_number(self.cutmix_alpha) and 0 <= self.cutmix_alpha <= 10,
             f"--cutmix_alpha must be in [0, 10] (got {self.cutmix_alpha!r}); 1 is the usual value, 0 turns it off")
        need(not (self.mixup_alpha and self.cutmix_alpha),
             "--mixup_alpha and --cutmix_alpha both mix the training batches: choose one (set the other to 0)")
        for name, low, high in (("width", 4, 1024), ("depth", 1, 16), ("stages", 1, 6)):
            value = getattr(self, name)
            need(_is_int(value) and low <= value <= high,
                 f"--{name} must be an integer in {low}..{high} (got {value!r})")
        need(self.input_size is None or (_is_int(self.input_size) and 16 <= self.input_size <= 1024),
             f"--input_size must be an integer in 16..1024 (got {self.input_size!r}); "
             f"leave it out for the model's default")
        need(self.eval_input_size is None or (_is_int(self.eval_input_size) and 16 <= self.eval_input_size <= 1024),
             f"--eval_input_size must be an integer in 16..1024 (got {self.eval_input_size!r}); "
             f"leave it out to evaluate and serve at the training size")
        need(self.eval_input_size is None or self.model != SEED_CNN,
             f"--eval_input_size needs a network that ends in global pooling; {SEED_CNN} flattens a fixed size")
        start = self.progressive_resize_from
        need(start in (None, 0) or (_is_int(start) and 16 <= start < (self.input_size or DEFAULT_INPUT_SIZE)),
             f"--progressive_resize_from must be an integer from 16 to below the network side --input_size "
             f"({self.input_size or DEFAULT_INPUT_SIZE}) (got {start!r}), or 0 to train at one side")
        need(start in (None, 0) or self.model == RESNET_LITE,
             f"--progressive_resize_from needs {RESNET_LITE}: it trains one network at several sides")
        need(self.tta in TTA, f"--tta must be one of {', '.join(TTA)} (got {self.tta!r})")
        need(_is_number(self.ema_momentum) and (self.ema_momentum == 0 or 0.5 <= self.ema_momentum < 1),
             f"--ema_momentum must be 0 (off) or in [0.5, 1) (got {self.ema_momentum!r}); 0.999 averages about "
             f"the last 1000 steps")
        need(_is_number(self.dropout) and 0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout!r})")
        need(_is_number(self.augment_strength) and 0 <= self.augment_strength <= 2,
             f"--augment_strength must be in [0, 2] (got {self.augment_strength!r}): 1 is the documented ranges, 0 "
             f"flips only")
        need(self.mixed_precision in MIXED_PRECISION,
             f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {self.mixed_precision!r})")
        need(self.weights is None or self.model in APPLICATIONS,
             f"--weights only applies to keras.applications backbones ({', '.join(APPLICATIONS)}), not {self.model}")
        frozen = self.freeze_backbone_epochs
        need(frozen is None or (_is_int(frozen) and 0 <= frozen < epochs),
             f"--freeze_backbone_epochs must be an integer from 0 to --epochs - 1 ({epochs - 1}) (got {frozen!r}): "
             f"the head trains alone that long, then the whole network")
        need(not frozen or self.model in APPLICATIONS,
             f"--freeze_backbone_epochs only applies to keras.applications backbones ({', '.join(APPLICATIONS)}), "
             f"not {self.model}")
        need(_is_number(self.fine_tune_factor) and 0 < self.fine_tune_factor <= 1,
             f"--fine_tune_factor must be in (0, 1] (got {self.fine_tune_factor!r}); 0.1 fine-tunes at a tenth of "
             f"--learning_rate")
        budget = self.time_budget_minutes
        need(budget is None or (_is_number(budget) and budget > 0),
             f"--time_budget_minutes must be > 0 (got {self.time_budget_minutes!r}); leave it out for no budget")
        need(self.steps_per_epoch is None or (_is_int(self.steps_per_epoch) and self.steps_per_epoch >= 1),
             f"--steps_per_epoch must be an integer >= 1 (got {self.steps_per_epoch!r}); leave it out for full epochs")
        need(_is_int(self.early_stopping_patience) and self.early_stopping_patience >= 0,
             f"--early_stopping_patience must be an integer >= 0 (got {self.early_stopping_patience!r})")
        need(_is_int(self.backup_every_steps) and self.backup_every_steps >= 1,
             f"--backup_every_steps must be an integer >= 1 (got {self.backup_every_steps!r})")
        need(_is_number(self.worker_timeout_minutes) and self.worker_timeout_minutes > 0,
             f"--worker_timeout_minutes must be > 0 (got {self.worker_timeout_minutes!r})")
        need(_is_int(self.shuffle_buffer) and self.shuffle_buffer >= 1,
             f"--shuffle_buffer must be an integer >= 1 (got {self.shuffle_buffer!r})")
        need(self.cache in CACHE, f"--cache must be one of {', '.join(CACHE)} (got {self.cache!r})")
        need(self.log_format in LOG_FORMATS,
             f"--log_format must be one of {', '.join(LOG_FORMATS)} (got {self.log_format!r})")
        need(_is_int(self.cache_limit_mb) and self.cache_limit_mb >= 0,
             f"--cache_limit_mb must be an integer >= 0 (got {self.cache_limit_mb!r})")
        need(_is_int(self.seed), f"--seed must be an integer (got {self.seed!r})")
        need(self.export_dir is None or bool(self.export_dir),
             "--export_dir must name a directory (local or gs://), or be left out for <model_dir>/export")
        for name in ("min_accuracy", "min_roc_auc", "max_regression"):
            value = getattr(self, name)
            need(_is_number(value) and 0 <= value <= 1, f"--{name} must be between 0 and 1 (got {value!r})")
        need(isinstance(self.force_publish, bool),
             f"--force_publish must be true or false (got {self.force_publish!r})")
        if problems:
            raise ValueError("invalid training config:\n  " + "\n  ".join(problems))

    def model_input_size(self, image_size) -> list[int]:
        """The (h, w) the network works at, given the dataset's image_size."""
        height, width = (int(v) for v in image_size)
        side = self.input_size
        if side is None and self.model == RESNET_LITE:
            side = min(DEFAULT_INPUT_SIZE, height, width)
        return [height, width] if side is None else [side, side]

    def start_side(self, image_size) -> int | None:
        """The side progressive resizing starts training at, given the dataset's image_size; None: one side."""
        start = self.progressive_resize_from
        if start is None:
            start = DEFAULT_PROGRESSIVE_FROM if self.model == RESNET_LITE else 0
        return start if 0 < start < self.model_input_size(image_size)[0] else None

    def eval_size(self, image_size) -> list[int]:
        """The (h, w) the network works at in evaluation and in the export: --eval_input_size, else the training
        size (model_input_size)."""
        if self.eval_input_size is None:
            return self.model_input_size(image_size)
        return [self.eval_input_size, self.eval_input_size]

    def head_only_epochs(self) -> int:
        """Epochs that train the new head alone, the backbone frozen: the fine-tuning schedule's first phase."""
        if self.model not in APPLICATIONS:
            return 0
        if self.freeze_backbone_epochs is None:
            return min(2, self.epochs - 1) if self.weights else 0
        return self.freeze_backbone_epochs

    def to_dict(self) -> dict:
        """The fields that decide the run (what config.json records and a resumed run must match)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in RUN_ONLY}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def optional(kind):
    """An argparse type: `kind`, or None for an empty value or `none`."""
    def parse(text: str):
        return None if text.lower() in ("", "none") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def parse_boolean(text: str) -> bool:
    """An argparse type for a boolean flag's value: true/false, yes/no, on/off, 1/0."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# One line of --help per flag: what it does and its unit; build_parser adds the default.
HELP = {
    "data_dir": "preprocessed dataset: TFRecord shards + metadata.json (local path or gs://)",
    "model_dir": "output directory (local path or gs://): config.json, history.csv, metrics.json, report.png, "
                 "mistakes.png, logs/, backup/, checkpoints/, export/",
    "model": f"architecture: {', '.join(MODELS)}",
    "epochs": "maximum epochs (passes over the training split); the epoch schedule anneals at the last one",
    "batch_size": "images per replica per step; global batch = batch_size x replicas",
    "learning_rate": "peak learning rate for ONE replica at --batch_size; multiplied by the number of replicas",
    "warmup_epochs": "epochs (fractions allowed) of linear warm-up from 0 to the peak rate, then the decay to 0",
    "lr_decay": "after the warm-up, the learning rate's decay to 0 at the end of the time budget (else of --epochs): "
                "cosine, or linear (a straight line)",
    "weight_decay": "AdamW decoupled weight decay per step, relative to the learning rate (0: plain Adam)",
    "label_smoothing": "binary cross-entropy label smoothing, 0 to 0.5 (0.1 trains towards 0.05/0.95)",
    "mixup_alpha": "mixup: each training image blended with another, and the labels alike, by a weight drawn from "
                   "Beta(alpha, alpha) (0.2 is the usual value; the training accuracy is then counted against the "
                   "blended labels); 0: off",
    "cutmix_alpha": "cutmix: into each training image a box of another is pasted, its area drawn from Beta(alpha, "
                    "alpha), and the labels blended by area (1 is the usual value; the training accuracy is then "
                    "counted against the blended labels); 0: off",
    "ema_momentum": "momentum per step of an exponential moving average of the weights (e.g. 0.999 averages about "
                    "the last 1000 steps); at the end the average and the best checkpoint are compared on the "
                    "validation split and the more accurate one is kept; 0: off",
    "width": "resnet_lite: filters of the first stage, doubled at each later stage",
    "depth": "resnet_lite: residual blocks per stage",
    "input_size": "side in pixels the network works at: images are resized to it inside the model (so serving at "
                  "the dataset's size stays consistent); none: 160 for resnet_lite (capped at the dataset size), "
                  "the dataset's size for the others",
    "eval_input_size": "side in pixels the network works at in evaluation and in the export; none: --input_size. "
                       "A little above it can pay (train-test resolution discrepancy)",
    "progressive_resize_from": "progressive resizing: training starts at this side (pixels) for the first 40%% of "
                               "the training (of the time budget, else of the epochs), grows to --input_size by "
                               "80%% and ends there. none: 96 for resnet_lite when its side is larger, else off; "
                               "0: off, one side throughout",
    "tta": "test-time augmentation in the evaluation and the export: none, or flip (the mean over each photo and "
           "its mirror image: twice the inference cost)",
    "stages": "resnet_lite: stages, each halving the resolution",
    "dropout": "dropout rate before the classifier, 0 to 1",
    "augment": "random flips, zoom-in crops, small rotations and colour changes of the training images (true/false)",
    "augment_strength": "scales --augment's ranges (1: 0-20%% zoom, +-10 degrees, the colour changes of "
                        "docs/TRAINING.md; 0.5: half of each; 0: flips only), 0 to 2",
    "weights": "keras.applications weights file (local or gs://; nothing is downloaded at run time), e.g. "
               "efficientnetb0_notop.h5; none: random initialisation",
    "freeze_backbone_epochs": "backbones: epochs that train the new head alone before the whole network is "
                              "fine-tuned; none: 2 with --weights, else 0",
    "fine_tune_factor": "backbones: after the head-only epochs, the whole network trains at --learning_rate x this, "
                        "cosine-decayed to 0",
    "mixed_precision": "lower-precision compute, float32 weights: auto (float16 on GPUs, bfloat16 on CPUs with AMX, "
                       "off on other CPUs), on (float16 on GPUs, bfloat16 on CPUs), off; the export is float32",
    "time_budget_minutes": "minutes of training: the learning rate warms up, then decays to 0 exactly when they "
                           "are used (or at the last epoch, if sooner); then evaluate and export. Early stopping is "
                           "off with a budget. none: no budget, the epoch schedule",
    "steps_per_epoch": "cap on training steps per epoch; none: one pass over the training split",
    "early_stopping_patience": "epochs without a better validation loss before training stops (without a time "
                               "budget); 0: never",
    "backup_every_steps": "steps between fault-tolerance backups (also at every epoch end and on SIGTERM)",
    "worker_timeout_minutes": "multi-worker only: minutes without a finished training step (a worker died or "
                              "hangs) after which a worker exits with status 5, so the Job restarts every worker "
                              "from the backup",
    "shuffle_buffer": "images in the shuffle buffer (the whole training split when it is cached)",
    "cache": "keep decoded images in memory: auto (when they fit in --cache_limit_mb), on, off",
    "cache_limit_mb": "megabytes of decoded images --cache auto keeps in memory",
    "seed": "random seed (initialisation, shuffling, augmentation)",
    "export_dir": "export root the model is published to, and whose `latest` it is gated against (local or gs://); "
                  "none: <model_dir>/export",
    "min_accuracy": "promotion gate: the lowest test accuracy, 0 to 1, that may become `latest` (0: no check)",
    "min_roc_auc": "promotion gate: the lowest test ROC AUC, 0 to 1, that may become `latest` (0: no check)",
    "max_regression": "promotion gate: how far below the current `latest` (scored on the same test split), as a "
                      "fraction (0.01 = 1 point), the new model's accuracy and ROC AUC may be",
    "force_publish": "publish as `latest` even when the promotion gate refuses (the first model when the thresholds "
                     "cannot be met, emergencies); said loudly in the log. Alone it means true",
    "check_only": "check the flags, that every gs:// path is reachable, the dataset (every split's records counted "
                  "against metadata.json) and the model_dir's config; print a JSON report, train and write nothing",
    "log_format": "text (HH:MM:SS LEVEL lines) or json (one object per line: severity, message, job, time; what "
                  "Cloud Logging parses on GKE); json also replaces Keras's progress lines with one line per epoch",
}
EXIT_USAGE = 2  # argparse's convention for a usage error, kept for bad values too


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations (allow_abbrev=False: `--epoch 1` is refused, not taken for --epochs) and
    with a "did you mean" for an unknown flag."""

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            word = unknown[0].split("=", 1)[0]
            flags = [option for action in self._actions for option in action.option_strings]
            close = difflib.get_close_matches(word, flags, n=1, cutoff=0.6) if word.startswith("-") else []
            hint = f"did you mean {close[0]}?" if close else f"see {self.prog} --help"
            self.error(f"unrecognized argument {unknown[0]!r}: {hint}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="catsdogs-train", allow_abbrev=False,
                     description="Train, evaluate and export a cats-vs-dogs classifier from a preprocessed dataset. "
                                 "Exit status: 0 success, 2 usage or config error (or an unreachable gs:// path), "
                                 "3 damaged dataset, 4 not blessed by the promotion gate (kept under export/, "
                                 "`latest` unchanged), 5 lost a worker (restart to resume), 143 interrupted by "
                                 "SIGTERM (re-run to resume).")
    for field in dataclasses.fields(TrainConfig):
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        kinds = [kind for kind in typing.get_args(field.type) if kind is not type(None)] or [field.type]
        kind = {int: int, float: float, str: str, bool: parse_boolean}[kinds[0]]
        metavar = {int: "INT", float: "FLOAT", str: "TEXT", bool: "{true,false}"}[kinds[0]]
        if type(None) in typing.get_args(field.type):
            kind = optional(kind)
        shown = "required" if required else "default: " + ("none" if default is None else str(default).lower()
                                                           if isinstance(default, bool) else str(default))
        # A boolean flag alone means true (--force_publish); it also takes a value (--augment false).
        boolean = {"nargs": "?", "const": True} if kind is parse_boolean else {}
        parser.add_argument(f"--{field.name}", type=kind, default=default, required=required, metavar=metavar,
                            **boolean, help=f"{HELP[field.name]} ({shown})")
    return parser


def parse_args(argv=None) -> TrainConfig:
    """CLI flags -> TrainConfig; a bad value exits with status 2 and the validation message, like argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))
