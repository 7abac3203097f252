"""Learning-rate schedules, and the time budget's clock.

- `learning_rate_schedule` (no time budget): linear warm-up to the peak, then cosine decay (or, with
  `--lr_decay linear`, straight-line decay) to 0 at the last step of --epochs.
- `BudgetSchedule` (with --time_budget_minutes): the same warm-up, then the same decay over the fraction of the budget
  used, so the rate reaches 0 exactly when the budget ends (or at the last step of --epochs, whichever comes first):
  a run anneals fully on a slow or busy machine too. `TimeBudget` measures that fraction before every step, writes
  it where the schedule reads it, and stops training when it reaches 1.
- `progressive_side` and `ProgressiveResize` (with --progressive_resize_from): the side the training images are
  resized to follows the same progress: the starting side for the first 40%, growing to the network side by 80%,
  the network side for the last 20%, so most steps are cheap and the annealed end is at full resolution.
- `for_run`: which of these a run uses.
- `FineTuneSchedule`: a pretrained backbone's two phases: the new head alone at the peak, then the whole network
  at peak x --fine_tune_factor, cosine-decayed to 0.

The step-based schedules read the optimizer's step counter and the budget's clock is saved with every backup
(trainer/backup.py), so a resumed run continues its schedule where it stopped.
"""

import math
import time

import keras

from trainer import logger

log = logger.get()


def decayed(fraction, decay: str):
    """The share of the peak left at `fraction` (0 -> 1, a tensor) of the decay: cosine, or a straight line."""
    if decay == "linear":
        return 1.0 - fraction
    return 0.5 * (1.0 + keras.ops.cos(math.pi * fraction))


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "cosine"):
    """Linear warm-up from 0 to peak over warmup_steps, then cosine (or linear) decay to 0 at total_steps."""
    if decay == "linear":
        return LinearDecay(peak, warmup_steps, total_steps)
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(total_steps - warmup_steps, 1),
                                                  warmup_target=peak, warmup_steps=warmup_steps)


def for_run(cfg, plan, progress):
    """The run's schedule: a backbone's fine-tuning schedule (in steps) when it has head-only epochs; else, with a
    time budget, BudgetSchedule over the budget's `progress`; else the epochs' warm-up and decay (--lr_decay)."""
    if plan.head_epochs:
        return FineTuneSchedule(plan.peak_rate, plan.warmup_steps, plan.head_epochs * plan.steps_per_epoch,
                                plan.total_steps, cfg.fine_tune_factor)
    if cfg.time_budget_minutes:
        return BudgetSchedule(plan.peak_rate, plan.warmup_steps, progress, cfg.lr_decay)
    return learning_rate_schedule(plan.peak_rate, plan.warmup_steps, plan.total_steps, cfg.lr_decay)


@keras.saving.register_keras_serializable(package="catsdogs")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to peak over warmup_steps, then a straight line to 0 at total_steps (`--lr_decay linear`)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = ops.minimum(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        fraction = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        return self.peak * warm * decayed(fraction, "linear")

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="catsdogs")
class FineTuneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The fine-tuning schedule of a pretrained backbone: while only the new head trains (the first head_steps),
    linear warm-up to peak then peak; then the whole network from peak x factor, cosine-decayed to 0 at total_steps."""

    def __init__(self, peak: float, warmup_steps: int, head_steps: int, total_steps: int, factor: float):
        self.peak, self.warmup_steps, self.head_steps = float(peak), int(warmup_steps), int(head_steps)
        self.total_steps, self.factor = int(total_steps), float(factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        head = self.peak * ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        progress = ops.clip((step - self.head_steps) / max(self.total_steps - self.head_steps, 1), 0.0, 1.0)
        whole = self.peak * self.factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.head_steps, head, whole)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "head_steps": self.head_steps,
                "total_steps": self.total_steps, "factor": self.factor}


class BudgetClock:
    """Training time used, across restarts: the seconds recorded in the backup plus this process's training time."""

    def __init__(self, budget_minutes: float | None):
        self.budget_seconds = None if budget_minutes is None else budget_minutes * 60.0
        self.seconds_before = 0.0  # restored from the backup
        self.started = None

    def start(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.seconds_before + (0.0 if self.started is None else time.monotonic() - self.started)

    def fraction_used(self) -> float:
        return 0.0 if not self.budget_seconds else self.elapsed() / self.budget_seconds


@keras.saving.register_keras_serializable(package="catsdogs")
class BudgetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to peak over warmup_steps, times a cosine (or, decay="linear", a straight line) over
    `progress` (0 -> 1, the fraction of the time budget used, a variable TimeBudget sets before every step): 0
    exactly when the budget ends."""

    def __init__(self, peak: float, warmup_steps: int, progress, decay: str = "cosine"):
        self.peak, self.warmup_steps, self.progress, self.decay = float(peak), int(warmup_steps), progress, decay

    def __call__(self, step):
        ops = keras.ops
        warm = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / max(self.warmup_steps, 1))
        fraction = ops.clip(ops.cast(ops.convert_to_tensor(self.progress), "float32"), 0.0, 1.0)
        return self.peak * warm * decayed(fraction, self.decay)

    def get_config(self):  # the progress variable is state, not config: it is set before every step
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "progress": 0.0, "decay": self.decay}


def steps_fraction(model, total_steps: int) -> float:
    """The fraction of `total_steps` (--epochs' steps) the model's optimizer has taken."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations)) / total_steps


class TimeBudget(keras.callbacks.Callback):
    """Before every step: progress = max(fraction of the budget used, fraction of --epochs' steps done), agreed by
    every worker (`agree`: the mean across workers, so their rates and their last step match); training stops once
    it reaches 1. That last step runs at rate 0."""

    def __init__(self, clock: BudgetClock, progress, total_steps: int, agree=float):
        super().__init__()
        self.clock, self.progress, self.total_steps, self.agree = clock, progress, max(int(total_steps), 1), agree
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.clock.start()

    def on_train_batch_begin(self, batch, logs=None):
        fraction = self.agree(max(self.clock.fraction_used(), steps_fraction(self.model, self.total_steps)))
        self.progress.assign(min(fraction, 1.0))
        if fraction >= 1.0 and not self.model.stop_training:
            self.stopped = True
            self.model.stop_training = True


# Progressive resizing (FFCV's ResNet recipes): the low side until RAMP_START of the training, then linear growth to
# the full side at RAMP_END, the full side for the rest; sides are multiples of SIDE_STEP (few distinct shapes).
RAMP_START, RAMP_END, SIDE_STEP = 0.4, 0.8, 16


def progressive_side(progress: float, low: int, high: int) -> int:
    """The training side at `progress` (0 -> 1) of a run that grows from low to high."""
    if low >= high:
        return high
    ramp = min(max((progress - RAMP_START) / (RAMP_END - RAMP_START), 0.0), 1.0)
    if ramp >= 1.0:  # the full side itself, also when it is not a multiple of SIDE_STEP (180 would round to 176)
        return high
    side = low + ramp * (high - low)
    return min(high, max(low, int(round(side / SIDE_STEP)) * SIDE_STEP))


class ProgressiveResize(keras.callbacks.Callback):
    """Before every step: sets `side` (an int32 variable the training pipeline reads per batch) from the progress:
    the time budget's (`progress`, set by TimeBudget before this runs), else the fraction of --epochs' steps done.
    The pipeline prefetches a few batches, which follow the change a few steps late. Logs each new side."""

    def __init__(self, side, low: int, high: int, total_steps: int, progress=None):
        super().__init__()
        self.side, self.low, self.high, self.total_steps = side, int(low), int(high), max(int(total_steps), 1)
        self.progress, self.current = progress, None
        self.sides = {}  # side -> steps trained at it (by this process)

    def on_train_batch_begin(self, batch, logs=None):
        if self.progress is not None:
            fraction = float(keras.ops.convert_to_numpy(self.progress))
        else:
            fraction = steps_fraction(self.model, self.total_steps)
        side = progressive_side(fraction, self.low, self.high)
        if side != self.current:
            self.side.assign(side)
            self.current = side
            log.info(f"progressive resizing: training at {side}x{side} from {fraction:.0%} of the run")
        self.sides[side] = self.sides.get(side, 0) + 1
