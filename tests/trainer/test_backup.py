"""Backups in-process on a tiny real model: what is restored is exactly what was saved, a damaged latest backup
falls back to the previous one, two damaged ones refuse to start, history.csv keeps each epoch once, and the time
budget's clock survives a restart. Killed and SIGTERMed runs are in tests/trainer/test_train.py."""

import json

import keras
import numpy as np
import pytest

from trainer import backup, schedules


def tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")


def train(model, backup_dir, epochs, **kwargs):
    callback = backup.ResumableBackup(str(backup_dir), save_freq=1000, stop=backup.StopRequest(), **kwargs)
    model.fit(*data(), batch_size=8, epochs=epochs, callbacks=[callback], verbose=0, shuffle=False)
    return callback


def test_resume_restores_exactly_the_saved_weights_and_optimizer_state(tmp_path):
    trained = tiny_model()
    clock = schedules.BudgetClock(budget_minutes=10)
    clock.seconds_before = 100.0  # as if restored from an earlier backup
    train(trained, tmp_path, epochs=2, clock=clock)
    saved_weights = [w.copy() for w in trained.get_weights()]
    saved_optimizer = [v.numpy().copy() for v in trained.optimizer.variables]
    assert json.loads((tmp_path / backup.BACKUP_METADATA).read_text())["epoch"] == 2

    restored = tiny_model()
    restarted_clock = schedules.BudgetClock(budget_minutes=10)
    callback = backup.ResumableBackup(str(tmp_path), save_freq=1000, stop=backup.StopRequest(), clock=restarted_clock)
    callback.set_model(restored)
    callback.on_train_begin()
    assert restarted_clock.seconds_before >= 100.0  # the budget counts the time trained before the restart
    for saved, now in zip(saved_weights, restored.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, now)
    for saved, now in zip(saved_optimizer, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(saved, now.numpy())
    assert restored._initial_epoch == 2 and int(restored.optimizer.iterations.numpy()) == 8


def test_a_damaged_latest_backup_falls_back_to_the_previous_and_two_refuse(tmp_path):
    train(tiny_model(), tmp_path, epochs=3)
    latest, previous = tmp_path / backup.BACKUP_WEIGHTS, tmp_path / (backup.BACKUP_WEIGHTS + ".bkp")
    assert backup.choose_backup(str(tmp_path)).which == "latest"
    latest.write_bytes(latest.read_bytes()[:-100])  # truncated
    chosen = backup.choose_backup(str(tmp_path))
    assert (chosen.which, chosen.epoch) == ("previous", 2) and "truncated or corrupt" in chosen.skipped
    assert backup.backup_epoch(str(tmp_path)) == 2
    previous.unlink()
    with pytest.raises(backup.BackupUnusable, match="Not starting over silently"):
        backup.choose_backup(str(tmp_path))


def test_no_backup_means_epoch_zero(tmp_path):
    assert backup.choose_backup(str(tmp_path / "none")) is None and backup.backup_epoch(str(tmp_path)) == 0


def test_history_keeps_the_epochs_before_the_resumed_one(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n")  # epochs numbered from 1, as the log counts them
    assert [row["epoch"] for row in backup.keep_history_before(str(path), 2)] == [1, 2]
    assert path.read_text() == "epoch,loss\n1,0.9\n2,0.8\n"
    assert backup.keep_history_before(str(path), 0) == [] and not path.exists()
