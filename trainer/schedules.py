"""Learning-rate schedules, as functions of the optimizer's step counter (restored with the backup, so a resumed
run continues the schedule where it stopped).

- `learning_rate_schedule`: linear warm-up to the peak, then cosine decay to 0 at the last step of --epochs.
- `FineTuneSchedule`: a pretrained backbone's two phases: the new head alone at the peak, then the whole network
  at peak x --fine_tune_factor, cosine-decayed to 0.
"""

import math

import keras


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0 to peak over warmup_steps, then cosine decay to 0 at total_steps."""
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(total_steps - warmup_steps, 1),
                                                  warmup_target=peak, warmup_steps=warmup_steps)


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
