"""Progress as a user sees it: a bar on a terminal, log lines otherwise, from files the workers committed."""

import io
import logging

from beam_pipelines import lifecycle, score
from tests.beam_pipelines.test_score import export_tiny_model
from tests.corpus import write_easy_dataset


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_shows_done_total_rate_and_time_left():
    bar = lifecycle._bar(lifecycle.Progress(250, 1000, "files"), 10.0, width=20)
    assert bar.startswith("[#####" + " " * 15 + "]") and "25% 250/1,000 files" in bar
    assert "25/s" in bar and "about 30 s left" in bar
    assert lifecycle._bar(lifecycle.Progress(7, None, "batches"), 2.0) == "7 batches done, 4/s, 2 s"


def test_a_scoring_run_draws_a_bar_on_a_terminal_and_logs_lines_elsewhere(tmp_path, monkeypatch, caplog):
    write_easy_dataset(tmp_path / "images", per_class=20, size=32)
    export_tiny_model(tmp_path / "model" / "export")
    flags = ["--runner", "DirectRunner", "--model", str(tmp_path / "model" / "export"), "--input",
             str(tmp_path / "images"), "--output_dir", str(tmp_path / "scores"), "--files_per_batch", "4"]
    terminal = _Terminal()
    monkeypatch.setattr(lifecycle.sys, "stderr", terminal)
    score.run([*flags, "--run_id", "tty"])
    drawn = terminal.getvalue()
    assert "\r[" in drawn and "/40 files" in drawn and drawn.endswith("\n")

    monkeypatch.setattr(lifecycle.sys, "stderr", io.StringIO())
    monkeypatch.setattr(lifecycle, "PROGRESS_SECONDS", 0.2)
    with caplog.at_level(logging.INFO, logger=lifecycle.__name__):
        score.run([*flags, "--run_id", "pipe"])
    assert any(record.getMessage().startswith("progress: ") for record in caplog.records)
