"""A time budget whose clock the test moves: budget tests count steps instead of sleeping or timing."""

import keras
import numpy as np

from trainer import schedules


class FakeClock(schedules.BudgetClock):
    """A budget of 10 "minutes" in which each step costs one minute: no sleeping, no timing."""

    def __init__(self):
        super().__init__(budget_minutes=10)
        self.minutes = 0

    def elapsed(self):
        return self.minutes * 60.0


def fit_on_the_budget(clock: FakeClock, progress, *, total_steps: int, on_step, callbacks=()):
    """Fits a one-layer model whose learning rate follows the budget (`BudgetSchedule`, peak 0.1, no warm-up) until
    `TimeBudget` stops it; each step costs `clock` one minute, and `on_step(model)` runs after every step, before the
    clock moves. `callbacks` run between the budget and `on_step`. Returns the `TimeBudget` and fit's `History`."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedules.BudgetSchedule(0.1, warmup_steps=0, progress=progress)),
                  loss="mse")

    class Step(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            on_step(model)
            clock.minutes += 1

    budget = schedules.TimeBudget(clock, progress, total_steps=total_steps)
    history = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), batch_size=1, epochs=100, verbose=0,
                        callbacks=[budget, *callbacks, Step()])
    return budget, history
