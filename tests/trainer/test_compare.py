import json

from trainer import compare


def finished_run(directory, model, accuracy, epochs, minutes, size):
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({
        "model": model, "accuracy": accuracy, "precision": 0.9, "recall": 0.8, "roc_auc": 0.95, "log_loss": 0.3,
        "examples": 200, "epochs_completed": epochs, "stopped_by": "time_budget",
        "train_seconds_this_run": minutes * 60}))
    (directory / "config.json").write_text(json.dumps({"network_input_size": [size, size]}))
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    rows += [f"{i},{0.6 + 0.02 * i},{0.6 - 0.02 * i},{accuracy - 0.01 * (epochs - 1 - i)},0.5" for i in range(epochs)]
    (directory / "history.csv").write_text("\n".join(rows) + "\n")
    return str(directory)


def test_comparison_table_and_picture(tmp_path):
    default = finished_run(tmp_path / "model", "resnet_lite", 0.925, 14, 59.5, 128)
    baseline = finished_run(tmp_path / "seed_cnn", "seed_cnn", 0.80, 4, 58.0, 180)
    assert compare.main([default, baseline]) == 0
    markdown = (tmp_path / "model" / "comparison.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    assert "resnet_lite | 128x128 | 14 | 59.5 | time_budget | 0.9250 | +0.0 pts" in rows[0]
    assert "seed_cnn | 180x180 | 4 | 58.0 | time_budget | 0.8000 | -12.5 pts" in rows[1]
    assert (tmp_path / "model" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unfinished_run_is_named(tmp_path, capsys):
    default = finished_run(tmp_path / "model", "resnet_lite", 0.9, 2, 1.0, 128)
    assert compare.main([default, str(tmp_path / "missing")]) == 2
    assert "missing/metrics.json not found" in capsys.readouterr().err
