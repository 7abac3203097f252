"""A time budget whose clock the test moves: budget tests count steps instead of sleeping or timing."""

from trainer import schedules


class FakeClock(schedules.BudgetClock):
    """A budget of 10 "minutes" in which each step costs one minute: no sleeping, no timing."""

    def __init__(self):
        super().__init__(budget_minutes=10)
        self.minutes = 0

    def elapsed(self):
        return self.minutes * 60.0
