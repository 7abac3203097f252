"""Real training runs on tiny generated TFRecords: learning, distribution, resuming after SIGKILL, SIGTERM backups."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.trainer.datasets import REPO, run_python, write_dataset
from trainer import backup, config, credentials, data, distribute, plan, publish, train

pytestmark = pytest.mark.slow

SMALL_NET = ["--width", "8", "--depth", "1", "--stages", "2"]
# Tests of the training machinery, not of model quality: a few epochs need not pass the promotion gate's thresholds.
NO_GATE = ["--min_accuracy", "0", "--min_roc_auc", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), size=32,
                         per_class={"train": 48, "validation": 16, "test": 16}, num_shards=2)


def history(model_dir):
    with open(model_dir / "history.csv") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def command(dataset, model_dir, *flags):
    return [sys.executable, "-m", "trainer.train", "--data_dir", str(dataset), "--model_dir", str(model_dir), *flags]


def test_default_model_learns_the_easy_task_and_writes_every_output(dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    argv = ["--data_dir", str(dataset), "--model_dir", str(model_dir), "--epochs", "15", "--batch_size", "16",
            "--width", "8", "--depth", "1", "--stages", "3", "--learning_rate", "0.005", "--warmup_epochs", "0.5"]
    assert train.main(argv) == 0
    metrics = json.loads((model_dir / "metrics.json").read_text())
    print("easy task test metrics:", {k: metrics[k] for k in ("accuracy", "roc_auc", "log_loss")})
    assert metrics["split"] == "test" and metrics["examples"] == 32
    assert metrics["accuracy"] >= 0.85, metrics  # chance is 0.5; typically 0.95-1.0 here
    rows = history(model_dir)
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))  # counted as the log counts them
    assert rows[-1]["loss"] < rows[0]["loss"] and metrics["epochs_completed"] == len(rows)
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved["config"]["model"] == "resnet_lite" and resolved["code_version"]
    assert resolved["placement"]["num_replicas"] == 1 and resolved["global_batch_size"] == 16
    assert (model_dir / "report.png").stat().st_size > 10_000
    assert (model_dir / "mistakes.png").stat().st_size > 10_000  # the 24 test photos furthest from their label
    assert (model_dir / "checkpoints" / "best.weights.h5").exists()
    assert not (model_dir / "backup").exists()  # a finished run leaves nothing to resume
    version = publish.read_latest(str(model_dir / "export")).version
    info = json.loads((model_dir / "export" / version / "model_info.json").read_text())
    assert info["metrics"]["accuracy"] == metrics["accuracy"]
    assert info["training_data"]["class_names"] == ["cat", "dog"] and info["model_name"] == "resnet_lite"

    capsys.readouterr()
    assert train.main(argv) == 0  # the same command again: nothing to redo
    assert "already holds a finished run" in capsys.readouterr().err
    assert train.main([*argv[:-1], "0.2"]) == 2  # another config in the same model_dir is refused
    err = capsys.readouterr().err
    assert "different config" in err and "--warmup_epochs 0.5 -> 0.2" in err


def test_missing_dataset_fails_at_launch_with_a_message(tmp_path, capsys):
    assert train.main(["--data_dir", str(tmp_path / "nothing"), "--model_dir", str(tmp_path / "m")]) == 2
    assert "Run preprocessing first" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_check_only_counts_the_records_logs_json_and_writes_nothing(dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), "--check_only",
                       "--log_format", "json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] and report["model_dir_state"] == "new run"
    assert {split: counts["total"] for split, counts in report["dataset_counts"].items()} == {
        "train": 96, "validation": 32, "test": 32}
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert any(line["severity"] == "INFO" and line["job"] == "catsdogs-train" and "check passed" in line["message"]
               for line in lines), captured.err
    assert not model_dir.exists()


def test_check_only_finds_a_damaged_shard(dataset, tmp_path, capsys):
    damaged = tmp_path / "data"
    shutil.copytree(dataset, damaged, symlinks=True)
    shard = sorted(damaged.rglob("train-*"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert train.main(["--data_dir", str(damaged), "--model_dir", str(tmp_path / "m"), "--check_only"]) == 3
    assert "train-s000.tfrecord" in capsys.readouterr().err  # named, with what to do


def test_unreachable_bucket_fails_at_launch_with_advice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(credentials, "REACH_SECONDS", 10.0)
    assert train.main(["--data_dir", "gs://no-such-bucket/data", "--model_dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach gs://no-such-bucket" in err and "Workload Identity" in err
    assert not (tmp_path / "m").exists()


MIRRORED_ON_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_mirrored_strategy_on_two_logical_cpus(dataset, tmp_path):
    model_dir = tmp_path / "model"
    run_python(MIRRORED_ON_TWO_CPUS, "--data_dir", dataset, "--model_dir", model_dir, "--model", "seed_cnn", *NO_GATE,
               "--epochs", "3", "--batch_size", "8", "--learning_rate", "0.001", "--warmup_epochs", "0")
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved["placement"]["strategy"] == "mirrored" and resolved["placement"]["num_replicas"] == 2
    # per-replica batch 8 and rate 0.001, scaled linearly by the 2 replicas
    assert resolved["global_batch_size"] == 16 and resolved["peak_learning_rate"] == pytest.approx(0.002)
    rows = history(model_dir)
    assert len(rows) == 3 and rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((model_dir / "metrics.json").read_text())["num_replicas"] == 2


def test_multi_worker_mirrored_strategy_with_two_local_workers(dataset, tmp_path):
    model_dir = tmp_path / "model"
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        env = os.environ | {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": index}})}
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
        processes.append((subprocess.Popen(
            command(dataset, model_dir, "--model", "seed_cnn", *NO_GATE, "--epochs", "3", "--batch_size", "8",
                    "--warmup_epochs", "0", "--time_budget_minutes", "30"),  # workers agree on the budget each step
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [process.wait(timeout=400) for process, _ in processes]
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved["placement"]["strategy"] == "multi_worker"
    assert resolved["placement"]["num_workers"] == 2 and resolved["placement"]["num_replicas"] == 2
    assert resolved["placement"]["is_chief"] and resolved["global_batch_size"] == 16
    rows = history(model_dir)
    assert len(rows) == 3 and rows[-1]["loss"] < rows[0]["loss"]
    assert (model_dir / "metrics.json").exists() and publish.read_latest(str(model_dir / "export"))


def wait_for(predicate, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, f"training exited early with {process.returncode}"
        time.sleep(0.05)
    raise AssertionError("timed out")


def epochs_logged(model_dir) -> int:
    try:
        return len(history(model_dir))
    except (FileNotFoundError, ValueError):
        return 0


SLOW_RUN = [*SMALL_NET, *NO_GATE, "--epochs", "6", "--batch_size", "4", "--backup_every_steps", "3",
            "--early_stopping_patience", "0", "--warmup_epochs", "0"]  # 24 steps/epoch


def weight_arrays(weights_file) -> list[bytes]:
    """Every array stored in a Keras .weights.h5 file (model and optimizer variables), as sorted raw bytes: read
    with h5py, independently of the Keras code that restores it."""
    import h5py

    arrays = []
    with h5py.File(weights_file, "r") as h5:
        h5.visititems(lambda _, item: arrays.append(item[()].tobytes()) if isinstance(item, h5py.Dataset) else None)
    return sorted(arrays)


def test_sigkill_mid_epoch_then_same_command_resumes_from_backup(dataset, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "model"
    cmd = command(dataset, model_dir, *SLOW_RUN)
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: epochs_logged(model_dir) >= 2, first)
        time.sleep(0.5)  # somewhere inside the next epoch, or still writing its backups: both must resume
        first.kill()
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    # A kill while the latest backup was being written leaves it truncated: then the previous one is the one to
    # resume from (its sha256 is checked; test_corrupt_backup.py covers that choice).
    chosen = backup.choose_backup(str(model_dir / "backup"))
    backed_up = {"epoch": chosen.epoch}
    assert backed_up["epoch"] >= 1
    print(f"killed with a usable {chosen.which} backup at epoch {chosen.epoch}")
    assert not (model_dir / "metrics.json").exists()
    saved = weight_arrays(chosen.weights)

    # The same command again, in this process so the model can be read right after the restore.
    restored = []
    restore = backup.ResumableBackup.on_train_begin

    def on_train_begin(self, logs=None):
        restore(self, logs)
        restored.append([v.numpy().tobytes() for v in [*self.model.weights, *self.model.optimizer.variables]])

    monkeypatch.setattr(backup.ResumableBackup, "on_train_begin", on_train_begin)
    capsys.readouterr()
    assert train.main(cmd[cmd.index("--data_dir"):]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"resuming from backup at epoch {backed_up['epoch']} (of 6)" in captured.err
    # every variable of the model and the optimizer (step counter, moments) holds exactly the backup's values
    assert sorted(restored[0]) == saved
    epochs_run = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert epochs_run[0] == f"Epoch {backed_up['epoch'] + 1}/6"  # not "Epoch 1/6"
    assert [row["epoch"] for row in history(model_dir)] == list(range(1, 7))  # each epoch once
    assert json.loads((model_dir / "config.json").read_text())["resumed_at_epoch"] == backed_up["epoch"]
    assert (model_dir / "metrics.json").exists() and not (model_dir / "backup").exists()


def test_sigterm_writes_a_backup_before_exiting(dataset, tmp_path):
    model_dir = tmp_path / "model"
    process = subprocess.Popen(command(dataset, model_dir, *SLOW_RUN), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: epochs_logged(model_dir) >= 1, process)
        time.sleep(0.2)
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)  # Kubernetes grants 15-30 s
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == train.EXIT_INTERRUPTED, stderr[-3000:]
    assert "received SIGTERM" in stderr and "backup written" in stderr
    metadata = model_dir / "backup" / "training_metadata.json"
    assert metadata.stat().st_mtime >= signalled - 0.01  # written after the signal, not a leftover
    assert (model_dir / "backup" / "latest.weights.h5").stat().st_mtime >= signalled - 0.01
    assert json.loads(metadata.read_text())["epoch"] >= 1
    assert not (model_dir / "metrics.json").exists()


def test_time_budget_stops_training_gracefully_then_evaluates_and_exports(dataset, tmp_path):
    model_dir = tmp_path / "model"
    result = subprocess.run(command(dataset, model_dir, *SMALL_NET, *NO_GATE, "--epochs", "200", "--batch_size", "4",
                                    "--time_budget_minutes", "0.1", "--early_stopping_patience", "0",
                                    "--log_format", "json"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["stopped_by"] == "time_budget" and 1 <= metrics["epochs_completed"] < 200
    # the budget stops at a batch end: the steps counted are those run, at most the started epochs' worth
    steps_per_epoch = json.loads((model_dir / "config.json").read_text())["steps_per_epoch"]
    assert 1 <= metrics["train_steps_this_run"] <= metrics["epochs_completed"] * steps_per_epoch
    # --log_format json: our lines are JSON objects (TensorFlow's C++ lines are not ours), one per epoch among them
    ours = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert not [line for line in result.stderr.splitlines() if "catsdogs-train:" in line]  # no text lines left
    epochs = [line for line in ours if line["message"].startswith("epoch ")]
    assert len(epochs) == metrics["epochs_completed"] and "val_loss" in epochs[-1]["message"]
    assert "Epoch 1/" not in result.stdout  # Keras's own progress lines are off
    assert publish.read_latest(str(model_dir / "export"))


def test_recipe_options_ema_flip_tta_and_a_larger_evaluation_size(dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), *SMALL_NET, *NO_GATE, "--epochs", "3",
                       "--batch_size", "16", "--ema_momentum", "0.9", "--tta", "flip", "--eval_input_size", "40",
                       "--label_smoothing", "0.1", "--mixup_alpha", "0.2", "--time_budget_minutes", "5"]) == 0
    out = capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # both candidates were scored on the validation split and the better one kept
    assert set(metrics["validation_by_weights"]) == {"ema", "best_checkpoint"}
    assert metrics["weights"] in ("ema", "best_checkpoint") and f"keeping the {metrics['weights']} weights" in out
    assert (model_dir / "checkpoints" / "ema.weights.h5").exists()
    assert metrics["tta"] == "flip" and metrics["eval_input_size"] == [40, 40]
    # trained at the dataset's 32, exported at 40: the chosen weights scored on validation at both sides, a warning
    # exactly when the exported side is the less accurate
    by_side = metrics["validation_by_side"]
    assert by_side["32"] == pytest.approx(metrics["validation_by_weights"][metrics["weights"]])
    assert ("the less accurate side" in out) == (by_side["40"]["accuracy"] < by_side["32"]["accuracy"]), (by_side, out)
    assert "at --eval_input_size 40" in out
    assert metrics["stopped_by"] == "epochs"  # the epochs ran out before the 5-minute budget
    version = publish.read_latest(str(model_dir / "export")).version
    info = json.loads((model_dir / "export" / version / "model_info.json").read_text())
    assert info["tta"] == "flip" and info["input_size"] == [32, 32]  # served at the dataset's size


@pytest.mark.parametrize("budget", [[], ["--time_budget_minutes", "5"]], ids=["epochs", "budget"])
def test_lr_decay_linear_reaches_the_optimizer_with_and_without_a_budget(dataset, tmp_path, budget):
    cfg = config.parse_args(["--data_dir", str(dataset), "--model_dir", str(tmp_path), *SMALL_NET, "--epochs", "4",
                             "--warmup_epochs", "0", "--lr_decay", "linear", *budget])
    placement = distribute.choose(cfg.mixed_precision)
    run_plan = plan.plan_run(cfg, data.read_metadata(cfg.data_dir), placement)
    model, _, progress = train.build_model(cfg, run_plan, placement)
    model.optimizer.iterations.assign(run_plan.total_steps // 4)
    progress.assign(0.25)  # a quarter of the way: a straight line leaves 3/4 of the peak, a cosine 0.85
    assert float(model.optimizer.learning_rate) == pytest.approx(0.75 * run_plan.peak_rate, rel=1e-5)


def test_progressive_resizing_trains_at_the_small_side_first_and_serves_at_the_full_side(dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), *SMALL_NET, *NO_GATE, "--epochs", "5",
                       "--batch_size", "16", "--progressive_resize_from", "16"]) == 0
    out = capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    steps = metrics["steps_by_training_side"]  # 6 steps per epoch, 30 in all: 16 until 40%, 32 from the ramp on
    assert set(steps) == {"16", "32"} and sum(steps.values()) == 30 and 10 <= steps["16"] <= 18, steps
    assert metrics["train_steps_this_run"] == 30 and "(epochs, 30 steps)" in out
    assert json.loads((model_dir / "config.json").read_text())["cache_start_side"]  # the 16-pixel batches: cached
    assert "training at 16x16 from 0%" in out and "training at 32x32 from" in out
    version = publish.read_latest(str(model_dir / "export")).version
    info = json.loads((model_dir / "export" / version / "model_info.json").read_text())
    assert info["input_size"] == [32, 32] and metrics["eval_input_size"] == [32, 32]


def test_progressive_resizing_follows_the_time_budget_not_the_epochs(tmp_path):
    """With a budget, the side grows with the fraction of the budget used: a run the budget cuts at 1% of its
    --epochs' steps must still end at the full side."""
    import types

    import keras

    from tests.trainer.clocks import FakeClock, fit_on_the_budget

    run_plan = types.SimpleNamespace(start_side=16, network_size=(32, 32), total_steps=1000)
    clock, progress, sides = FakeClock(), keras.Variable(0.0, trainable=False), []
    side = train.training_side(run_plan)
    resize = train.progressive_resize(run_plan, side, budget_progress=progress)
    budget, _ = fit_on_the_budget(clock, progress, total_steps=run_plan.total_steps, callbacks=[resize],
                                  on_step=lambda model: sides.append(int(side.numpy())))
    assert budget.stopped and len(sides) == 11  # 1.1% of the 1,000 steps
    assert sides[:5] == [16] * 5 and sides[-3:] == [32] * 3, sides  # 16 until 40% of the budget, 32 from 80%
    assert train.progressive_resize(run_plan, None) is None


def test_metrics_count_the_steps_run_when_the_budget_stops_mid_epoch():
    """A budget stops training at a batch end: metrics.json's steps and step rate count the steps run, not every
    started epoch in full (a 60-minute run's last, partial epoch overstated them by up to an epoch)."""
    import types

    import keras

    from tests.trainer.clocks import FakeClock, fit_on_the_budget

    clock, progress, steps_run, count = FakeClock(), keras.Variable(0.0, trainable=False), [], train._StepCount()
    budget, history = fit_on_the_budget(clock, progress, total_steps=1000, callbacks=[count],
                                        on_step=lambda model: steps_run.append(1))
    epochs, steps_per_epoch = len(history.epoch), 4  # 4 samples, batch 1
    assert budget.stopped and count.steps == len(steps_run) < epochs * steps_per_epoch  # stopped mid-epoch
    facts = train.training_facts(train.Trained(epochs=epochs, seconds=10.0, steps=count.steps),
                                 types.SimpleNamespace(global_batch=1, steps_per_epoch=steps_per_epoch),
                                 types.SimpleNamespace(num_replicas=1),
                                 "time_budget")
    assert facts["train_steps_this_run"] == len(steps_run)
    assert facts["train_steps_per_second_this_run"] == pytest.approx(len(steps_run) / 10.0)


def test_early_stopping_never_cuts_a_budget_run_short(tmp_path):
    import keras

    from trainer import config as config_lib
    from trainer import schedules

    cfg = config_lib.TrainConfig(data_dir="unused", model_dir=str(tmp_path), early_stopping_patience=2,
                                 time_budget_minutes=30)
    outputs = plan.Outputs(out_dir=str(tmp_path), backup_dir=str(tmp_path / "backup"),
                            history=str(tmp_path / "history.csv"), best_weights=str(tmp_path / "best.weights.h5"))
    backups = backup.ResumableBackup(outputs.backup_dir, 100, backup.StopRequest())
    budget = schedules.TimeBudget(schedules.BudgetClock(30), keras.Variable(0.0), total_steps=100)

    def kinds(callbacks):
        return {type(callback).__name__ for callback in callbacks}

    with_budget = kinds(train.make_callbacks(cfg, outputs, "val_loss", [], None, budget, backups))
    without = kinds(train.make_callbacks(cfg, outputs, "val_loss", [], None, None, backups))
    assert "TimeBudget" in with_budget and "EarlyStopping" not in with_budget
    assert "EarlyStopping" in without and "TimeBudget" not in without


def test_mixed_precision_on_a_cpu_trains_in_bfloat16_and_exports_float32(dataset, tmp_path):
    """--mixed_precision on without a GPU: bfloat16 compute (auto picks it on CPUs with AMX), float32 weights; the
    model evaluated and exported is float32, and the process gets its dtype policy back."""
    import keras

    model_dir = tmp_path / "model"
    assert train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), *SMALL_NET, *NO_GATE, "--epochs", "3",
                       "--batch_size", "16", "--mixed_precision", "on", "--progressive_resize_from", "0"]) == 0
    assert keras.mixed_precision.global_policy().name == "float32"
    placement = json.loads((model_dir / "config.json").read_text())["placement"]
    assert placement["precision"] == "mixed_bfloat16" and placement["mixed_precision"]
    rows = history(model_dir)
    assert len(rows) == 3 and all(row["loss"] == row["loss"] for row in rows)  # trained, no NaN
    version = publish.read_latest(str(model_dir / "export")).version
    result = run_python("import sys, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
                        "p = m.signatures['serve_pixels'](pixels=tf.zeros([2, 32, 32, 3], tf.uint8))['probability']; "
                        "print(p.dtype.name, *p.numpy().ravel())", model_dir / "export" / version)
    dtype, *probabilities = result.stdout.split()[-3:]
    assert dtype == "float32" and all(0 <= float(p) <= 1 for p in probabilities)
