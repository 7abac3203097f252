"""A decoder that hangs or kills its process on one file costs that file, not the job, in both pipelines.

The stand-in decoder (tests/reliability/faulty.py, named by CATSDOGS_TEST_DECODE_FN) hangs on one file and aborts on
another. Each job runs as its own process with a deadline, so if the isolation were gone the test fails (a timeout,
or the job dying of SIGABRT) instead of hanging or killing pytest.
"""

import json
import textwrap

import pytest

from beam_pipelines import isolation, score
from tests import corpus
from tests.reliability import faulty
from tests.reliability.conftest import (
    FAULTY_DECODER,
    job_env,
    preprocess_command,
    read_dataset,
    read_outcomes,
    run_job,
    score_command,
)
from tests.trainer.datasets import run_python

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 2


def test_a_hanging_or_crashing_decoder_costs_one_file_and_the_scoring_job_finishes(tiny_export, tmp_path):
    images, output = tmp_path / "images", tmp_path / "scores"
    good = corpus.write_easy_dataset(images, per_class=4, size=32)
    hangs, crashes = images / "cat" / "hangs.jpg", images / "dog" / "crashes.png"
    hangs.write_bytes(faulty.HANG + b" then anything")
    crashes.write_bytes(faulty.CRASH)

    run_job(score_command("--model", tiny_export, "--input", images, "--output_dir", output, "--run_id", "r",
                          "--decode_timeout_seconds", TIMEOUT_SECONDS, "--files_per_batch", 5), env=job_env(),
            timeout=150)

    predictions, errors = read_outcomes(output / "r")
    assert set(predictions) == {str(path) for path in good}
    assert {path: row["reason"] for path, row in errors.items()} == {
        str(hangs): isolation.DECODER_TIMEOUT, str(crashes): isolation.DECODER_CRASH}
    assert "exit code -6" in errors[str(crashes)]["detail"]  # SIGABRT, as a failed assertion in a C codec would end
    assert f"{TIMEOUT_SECONDS:g} s" in errors[str(hangs)]["detail"]
    summary = json.loads((output / "r" / score.SUMMARY_FILE).read_text())
    assert summary["failed_by_reason"] == {isolation.DECODER_TIMEOUT: 1, isolation.DECODER_CRASH: 1}


def test_a_hanging_or_crashing_decoder_costs_one_file_and_preprocessing_finishes(tmp_path):
    images, output = tmp_path / "images", tmp_path / "data"
    good = corpus.write_easy_dataset(images, per_class=4, size=32)
    hangs, crashes = images / "cat" / "hangs.jpg", images / "dog" / "crashes.png"
    hangs.write_bytes(faulty.HANG + b" then anything")
    crashes.write_bytes(faulty.CRASH)

    run_job(preprocess_command("--input", images, "--output_dir", output, "--image_size", 32,
                               "--decode_timeout_seconds", TIMEOUT_SECONDS, "--files_per_batch", 5),
            env=job_env(), timeout=150)

    sources, rejections = read_dataset(output)
    assert set(sources) == {str(path) for path in good}
    assert {path: row["reason"] for path, row in rejections.items()} == {
        str(hangs): isolation.DECODER_TIMEOUT, str(crashes): isolation.DECODER_CRASH}
    assert "exit code -6" in rejections[str(crashes)]["detail"]


# decode_stream keeps several files in flight to one child: a hang or a crash in the middle of a stream must cost only
# that file, and the files sent behind it must reach the next child and come back in order.
STREAM = textwrap.dedent(f"""
    import json, sys
    from pathlib import Path
    from beam_pipelines import isolation
    runner = isolation.DecodeRunner({TIMEOUT_SECONDS})
    items = [(path, Path(path).read_bytes()) for path in sys.argv[1:]]
    print(json.dumps([[path, outcome[0] if outcome[0] == "ok" else outcome[1]]
                      for path, outcome in runner.decode_stream(items, (16, 16), 10**6, in_flight=3)]))
    print(runner.restarts)
    runner.close()
""")


def test_files_in_flight_behind_a_hang_or_a_crash_are_decoded_by_the_next_child(tmp_path):
    good = corpus.write_easy_dataset(tmp_path, per_class=3, size=24)
    (hangs := tmp_path / "hangs.jpg").write_bytes(faulty.HANG)
    (crashes := tmp_path / "crashes.png").write_bytes(faulty.CRASH)
    order = [good[0], hangs, good[1], good[2], crashes, good[3], good[4], crashes, hangs, good[5]]

    lines = run_python(STREAM, *order, env=job_env(FAULTY_DECODER), timeout=120).stdout.splitlines()
    outcomes, restarts = json.loads(lines[-2]), int(lines[-1])

    expected = {str(hangs): isolation.DECODER_TIMEOUT, str(crashes): isolation.DECODER_CRASH}
    assert outcomes == [[str(path), expected.get(str(path), "ok")] for path in order]
    assert restarts == 4
