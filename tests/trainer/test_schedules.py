"""Learning-rate schedules: values at the points that define them; the time budget drives its schedule and stops
training once used."""

import keras
import pytest

from tests.trainer.clocks import FakeClock, fit_on_the_budget
from trainer import schedules


def rates(schedule, steps):
    return [float(schedule(step)) for step in steps]


def test_warm_up_then_cosine_to_zero_at_the_last_step():
    schedule = schedules.learning_rate_schedule(0.01, warmup_steps=10, total_steps=110)
    start, peak, middle, end = rates(schedule, (0, 10, 60, 110))
    assert start == pytest.approx(0) and peak == pytest.approx(0.01)
    assert middle == pytest.approx(0.005) and end == pytest.approx(0, abs=1e-9)


def test_no_warm_up_starts_at_the_peak():
    schedule = schedules.learning_rate_schedule(0.01, warmup_steps=0, total_steps=100)
    assert rates(schedule, (0, 50, 100)) == pytest.approx([0.01, 0.005, 0], abs=1e-9)


def test_linear_decay_warms_up_then_falls_in_a_straight_line_to_zero_at_the_last_step():
    schedule = schedules.learning_rate_schedule(0.01, warmup_steps=10, total_steps=110, decay="linear")
    assert rates(schedule, (0, 5, 10, 35, 60, 110, 200)) == pytest.approx([0, 0.005, 0.01, 0.0075, 0.005, 0, 0],
                                                                          abs=1e-9)
    assert schedules.LinearDecay(**schedule.get_config()).get_config() == schedule.get_config()
    no_warm_up = schedules.learning_rate_schedule(0.01, warmup_steps=0, total_steps=100, decay="linear")
    assert rates(no_warm_up, (0, 25, 100)) == pytest.approx([0.01, 0.0075, 0], abs=1e-9)


def test_fine_tune_schedule_head_at_the_peak_then_the_whole_network_lower():
    schedule = schedules.FineTuneSchedule(0.01, warmup_steps=2, head_steps=10, total_steps=30, factor=0.1)
    warm, head, switch, middle, end = rates(schedule, (0, 9, 10, 20, 30))
    assert warm == pytest.approx(0.005) and head == pytest.approx(0.01)
    assert switch == pytest.approx(0.001) and middle == pytest.approx(0.0005) and end == pytest.approx(0, abs=1e-9)
    assert schedules.FineTuneSchedule(**schedule.get_config()).get_config() == schedule.get_config()


def test_budget_schedule_follows_the_fraction_of_the_budget_used():
    progress = keras.Variable(0.0, trainable=False)
    schedule = schedules.BudgetSchedule(0.01, warmup_steps=10, progress=progress)
    assert float(schedule(0)) == pytest.approx(0.001) and float(schedule(9)) == pytest.approx(0.01)
    for fraction, expected in ((0.5, 0.005), (1.0, 0.0), (1.5, 0.0)):
        progress.assign(fraction)
        assert float(schedule(1000)) == pytest.approx(expected, abs=1e-9)
    linear = schedules.BudgetSchedule(0.01, warmup_steps=10, progress=progress, decay="linear")
    for fraction, expected in ((0.25, 0.0075), (0.5, 0.005), (1.0, 0.0)):  # cosine at 0.25: 0.0085
        progress.assign(fraction)
        assert float(linear(1000)) == pytest.approx(expected, abs=1e-9)


def test_time_budget_anneals_to_zero_and_stops_exactly_when_the_budget_is_used():
    clock, progress, rates = FakeClock(), keras.Variable(0.0, trainable=False), []
    budget, fit = fit_on_the_budget(clock, progress, total_steps=1000,
                                    on_step=lambda model: rates.append(float(model.optimizer.learning_rate)))
    assert budget.stopped and len(rates) == 11 and len(fit.epoch) == 3  # steps at 0..10 "minutes"
    assert rates[0] == pytest.approx(0.1) and rates[5] == pytest.approx(0.05) and rates[-1] == pytest.approx(0)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_progressive_side_holds_the_low_side_then_grows_to_the_full_side_in_steps_of_16():
    sides = [schedules.progressive_side(p / 100, 96, 160) for p in range(101)]
    assert sides[0] == sides[40] == 96 and sides[80] == sides[100] == 160
    assert sides == sorted(sides) and set(sides) == {96, 112, 128, 144, 160}  # grows, a few shapes only
    assert schedules.progressive_side(0.6, 96, 160) == 128  # halfway through the ramp
    assert schedules.progressive_side(0.0, 160, 160) == 160
    assert schedules.progressive_side(0.8, 96, 180) == 180  # the end is the full side, not the nearest 16 (176)
