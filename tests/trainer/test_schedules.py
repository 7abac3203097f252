"""Learning-rate schedules: values at the points that define them."""

import pytest

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


def test_fine_tune_schedule_head_at_the_peak_then_the_whole_network_lower():
    schedule = schedules.FineTuneSchedule(0.01, warmup_steps=2, head_steps=10, total_steps=30, factor=0.1)
    warm, head, switch, middle, end = rates(schedule, (0, 9, 10, 20, 30))
    assert warm == pytest.approx(0.005) and head == pytest.approx(0.01)
    assert switch == pytest.approx(0.001) and middle == pytest.approx(0.0005) and end == pytest.approx(0, abs=1e-9)
    assert schedules.FineTuneSchedule(**schedule.get_config()).get_config() == schedule.get_config()
