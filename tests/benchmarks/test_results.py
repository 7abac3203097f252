"""RESULTS.md is written a section at a time: a stopped run keeps what it measured, a partial run keeps the rest."""

import json
import signal

import pytest

from benchmarks import bench, harness, results

OLD_MD = """# Benchmark results

- date: 2026-12-02 07:58 UTC
- machine: 2 cores, AMD EPYC, 23.5 GiB, Python 3.11.7
- code version: 2a1cf254b90b
- command: `make bench BENCH_ARGS=""`, 3 repeats (2 of the 115,000-file runs), 72 min

## Targets
(regenerated)

<!-- analysis: written by hand, kept by bench.py -->
## Why, by hand
"""
OLD_JSON = {"machine": {}, "rows": ["| **preprocess** | | | | |", "| ours (pets-180) | 948.4 img/s | | 3 | 1.41 |",
                                    "| preprocess ours/naive (pets-180) | 1.52x | | | |",
                                    "| **score** | | | | |", "| ours (pets-180) | 267.1 img/s | | 3 | 6.26 |",
                                    "| ours: peak memory (114,955 files) | 899.0 MiB | | 2 | |"],
            "ratios": {"preprocess ours/naive (pets-180)": 1.52, "score ours/naive (pets-180)": 0.80,
                       "score peak memory 115k/23k": 1.01}}


@pytest.fixture
def old_results(tmp_path):
    output = tmp_path / "RESULTS.md"
    output.write_text(OLD_MD)
    output.with_suffix(".json").write_text(json.dumps(OLD_JSON))
    return output


def test_a_file_of_the_older_layout_is_read_as_one_run_per_section(old_results):
    sections = results.load(old_results)

    assert list(sections) == ["preprocess", "score"]
    assert sections["preprocess"].rows == OLD_JSON["rows"][1:3]
    assert sections["score"].ratios == {"score ours/naive (pets-180)": 0.80, "score peak memory 115k/23k": 1.01}
    assert sections["preprocess"].date == "2026-12-02 07:58 UTC"
    assert sections["score"].code_version == "2a1cf254b90b"


def _fake_section(rows, ratios=None, fail=None, left_out=False):
    def run(args, report):
        report.rows.extend(rows)
        report.ratios.update(ratios or {})
        report.left_out = left_out  # as --skip_scale does
        if fail:
            fail()
    return run


def _run_bench(monkeypatch, tmp_path, output, sections, names):
    (tmp_path / "shared" / "pets-180").mkdir(parents=True)
    monkeypatch.setattr(harness, "SHARED", tmp_path / "shared")
    monkeypatch.setattr(bench, "SECTIONS", sections)
    previous = signal.getsignal(signal.SIGTERM)  # bench.main installs its own: the test process gets its own back
    try:
        bench.main(["--sections", names, "--output", str(output)])
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_run_of_one_section_keeps_the_others_marked_with_their_run(monkeypatch, tmp_path, old_results):
    sections = {"preprocess": _fake_section([]), "train": _fake_section([]),
                "score": _fake_section(["| ours (pets-180) | 300.0 img/s | | 3 | 5.00 |"],
                                       {"score ours/naive (pets-180)": 1.05}, left_out=True)}
    _run_bench(monkeypatch, tmp_path, old_results, sections, "score")
    text = old_results.read_text()

    assert "| **preprocess** (run of 2026-12-02 07:58 UTC, code 2a1cf254b90b" in text
    assert "| ours (pets-180) | 948.4 img/s | | 3 | 1.41 |" in text  # kept from the earlier run
    assert "| ours (pets-180) | 300.0 img/s | | 3 | 5.00 |" in text  # this run's score
    assert "267.1 img/s" not in text  # the earlier score rows are replaced, not kept beside
    # what this run did not measure (the scale cases) stays, marked with its run, and is judged as that run's
    assert "| ours: peak memory (114,955 files) (run of 2026-12-02 07:58 UTC) | 899.0 MiB | | 2 | |" in text
    assert "| 1.01 (<= 1.1, run of 2026-12-02 07:58 UTC) | met |" in text
    assert "| 1.52 (>= 1.2, run of 2026-12-02 07:58 UTC) | met |" in text
    assert "| 1.05 (> 1) | met |" in text
    assert "- sections measured in this run: score" in text
    assert text.rstrip().endswith("## Why, by hand")  # the hand-written analysis stays
    assert set(json.loads(old_results.with_suffix(".json").read_text())["sections"]) == {"preprocess", "score"}


def test_a_section_that_ran_all_its_cases_replaces_its_earlier_figures_whole(monkeypatch, tmp_path, old_results):
    """A figure renamed or dropped since the earlier run does not linger beside the new ones, marked as earlier."""
    sections = {"preprocess": _fake_section([]), "train": _fake_section([]),
                "score": _fake_section(["| ours, renamed (pets-180) | 300.0 img/s | | 3 | 5.00 |"],
                                       {"score ours/naive (pets-180)": 1.05})}
    _run_bench(monkeypatch, tmp_path, old_results, sections, "score")
    text = old_results.read_text()
    score = json.loads(old_results.with_suffix(".json").read_text())["sections"]["score"]

    assert "| ours, renamed (pets-180) | 300.0 img/s | | 3 | 5.00 |" in text
    assert "267.1 img/s" not in text and "899.0 MiB" not in text  # the earlier run's score rows, all gone
    assert score["rows"] == ["| ours, renamed (pets-180) | 300.0 img/s | | 3 | 5.00 |"]
    assert score["ratios"] == {"score ours/naive (pets-180)": 1.05}  # the earlier memory ratio went with its row
    assert "| 1.52 (>= 1.2, run of 2026-12-02 07:58 UTC) | met |" in text  # the sections not run still stay


def test_a_run_stopped_by_sigterm_writes_what_it_measured_before_it_exits(monkeypatch, tmp_path):
    output = tmp_path / "new folder" / "RESULTS.md"  # --output into a folder that is not there yet

    def terminate():
        signal.raise_signal(signal.SIGTERM)

    sections = {"preprocess": _fake_section(["| preprocess row | 1 img/s | | 3 | |"]),
                "train": _fake_section(["| train row, finished | 2 img/s | | 3 | |"], fail=terminate),
                "score": _fake_section(["| score row | 3 img/s | | 3 | |"])}
    with pytest.raises(SystemExit) as stopped:
        _run_bench(monkeypatch, tmp_path, output, sections, "preprocess,train,score")
    text = output.read_text()

    assert stopped.value.code == 128 + signal.SIGTERM
    assert "| preprocess row | 1 img/s | | 3 | |" in text
    assert "| **train** (stopped part-way) | | | | |" in text
    assert "| train row, finished | 2 img/s | | 3 | |" in text
    assert "score row" not in text
    assert "- **stopped** during train (SystemExit: 143)" in text


def _is_the_job(process) -> bool:
    import psutil

    try:
        return "sleep 60" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def test_a_stopped_run_kills_the_job_it_was_measuring(monkeypatch, tmp_path):
    """The job under measurement (and its children) goes with the bench, instead of running on alone."""
    import os
    import threading

    import psutil

    started = []

    def terminate_once_the_job_runs():
        for _ in range(100):  # only the job's processes: the test process may have others (fixtures' servers)
            started[:] = [child for child in psutil.Process().children(recursive=True) if _is_the_job(child)]
            if len(started) == 2:  # bash and its sleep
                break
            threading.Event().wait(0.1)
        threading.Event().wait(0.5)  # in the middle of the measurement, as a stop comes
        os.kill(os.getpid(), signal.SIGTERM)

    def measure(args, report):
        threading.Thread(target=terminate_once_the_job_runs, daemon=True).start()
        harness.run_command(["bash", "-c", "sleep 60; echo"])

    with pytest.raises(SystemExit):
        _run_bench(monkeypatch, tmp_path, tmp_path / "RESULTS.md", {"score": measure}, "score")

    assert started, "the job never started"
    assert not [child for child in started if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
