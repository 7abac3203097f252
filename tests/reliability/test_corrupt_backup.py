"""Case 7: a corrupt latest training backup falls back to the previous one; with both corrupt the trainer fails
loudly, and never silently starts again from epoch 0 or resumes from garbage.

SIGKILL and SIGTERM mid-epoch are tested in tests/trainer/test_train.py (test_sigkill_mid_epoch_then_same_command_
resumes_from_backup, test_sigterm_writes_a_backup_before_exiting). The corruption here is a flipped byte inside the
weights' data: the HDF5 file still opens and Keras alone would load it without a word.
"""

import json
import shutil
import signal
import subprocess

import pytest

from tests.trainer.datasets import REPO, write_dataset
from tests.trainer.test_train import NO_GATE, SMALL_NET, command, epochs_logged, history, wait_for
from trainer import train

pytestmark = pytest.mark.slow

RUN = [*SMALL_NET, *NO_GATE, "--epochs", "3", "--batch_size", "4", "--backup_every_steps", "1000",
       "--early_stopping_patience", "0", "--warmup_epochs", "0"]  # 24 steps per epoch; backups at epoch ends


def _flip_a_weight_byte(weights_file) -> None:
    """Flips one byte in the raw data of the largest dataset of an HDF5 weights file."""
    import h5py

    datasets = []
    with h5py.File(weights_file, "r") as h5:
        h5.visititems(lambda _, item: datasets.append((item.nbytes, item.id.get_offset()))
                      if isinstance(item, h5py.Dataset) and item.id.get_offset() is not None else None)
    _, offset = max(datasets)
    with open(weights_file, "r+b") as handle:
        handle.seek(offset + 5)
        byte = handle.read(1)
        handle.seek(offset + 5)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_a_corrupt_latest_backup_falls_back_to_the_previous_one_and_two_corrupt_ones_fail_loudly(tmp_path, capsys):
    dataset = write_dataset(tmp_path / "data", size=32, num_shards=1)
    model_dir, backup = tmp_path / "model", tmp_path / "model" / "backup"
    cmd = command(dataset, model_dir, *RUN)
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # a real run, stopped in its second epoch: it leaves a latest and a previous backup
        wait_for(lambda: epochs_logged(model_dir) >= 1, first)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == train.EXIT_INTERRUPTED, stderr[-3000:]
    previous_epoch = json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"]
    assert previous_epoch >= 1
    intact = tmp_path / "intact-backup"
    shutil.copytree(backup, intact)
    rows_before = history(model_dir)

    # Both backups corrupt: exit status 2 with what to do, nothing trained, nothing of the run thrown away.
    _flip_a_weight_byte(backup / "latest.weights.h5")
    _flip_a_weight_byte(backup / "latest.weights.h5.bkp")
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), *RUN]) == 2
    err = capsys.readouterr().err
    assert "cannot be restored" in err and "truncated or corrupt" in err and "Not starting over silently" in err
    assert history(model_dir) == rows_before and not (model_dir / "metrics.json").exists()

    # Only the latest corrupt: the same command resumes from the previous backup, not from epoch 0.
    shutil.rmtree(backup)
    shutil.copytree(intact, backup)
    _flip_a_weight_byte(backup / "latest.weights.h5")
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "the latest backup is unusable" in resumed.stderr and "truncated or corrupt" in resumed.stderr
    assert f"resuming from backup at epoch {previous_epoch} (of 3)" in resumed.stderr
    epochs_run = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    assert epochs_run[0] == f"Epoch {previous_epoch + 1}/3"
    assert [row["epoch"] for row in history(model_dir)] == [1, 2, 3]
    assert (model_dir / "metrics.json").exists()
