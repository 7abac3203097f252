"""Case 2: a decoder that hangs or kills its process on one file costs that file, not the job, in both pipelines.

Both jobs run in child interpreters with a deadline, so if the isolation were gone the test fails (a timeout or
an abort of that child) instead of hanging or killing pytest.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from beam_pipelines import isolation
from tests import corpus
from tests.reliability import faulty
from tests.trainer.datasets import REPO, run_python

pytestmark = pytest.mark.slow

FAULTY_DECODER = "tests.reliability.faulty:decode"
TIMEOUT_SECONDS = 2

# The scoring job's DecodeImagesFn, called directly (setup / process / teardown) on a good, a hanging and a crashing
# file: the same DoFn the pipeline runs before batching, without needing a model.
SCORE_DECODE = textwrap.dedent(f"""
    import json, sys
    from beam_pipelines import score
    fn = score.DecodeImagesFn((32, 32), 10**6, decode_timeout={TIMEOUT_SECONDS}, decode_fn="{FAULTY_DECODER}")
    fn.setup()
    outcomes = {{}}
    for path in sys.argv[1:]:
        for _, pixels, error in fn.process((path, 100)):
            outcomes[path] = list(pixels.shape) if pixels is not None else [error["reason"], error["detail"]]
    fn.teardown()
    print(json.dumps(outcomes))
""")


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_a_hanging_or_crashing_decoder_costs_one_file_and_the_job_finishes(tmp_path):
    images = tmp_path / "images"
    good = corpus.write_easy_dataset(images, per_class=4, size=48)
    hangs, crashes = images / "cat" / "hangs.jpg", images / "dog" / "crashes.png"
    hangs.write_bytes(faulty.HANG + b" then anything")
    crashes.write_bytes(faulty.CRASH)
    output = tmp_path / "data"

    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.preprocess", f"--input={images}", f"--output_dir={output}",
         "--num_shards=1", f"--decode_fn={FAULTY_DECODER}", f"--decode_timeout_seconds={TIMEOUT_SECONDS}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((output / "metadata.json").read_text())
    assert metadata["read"] == len(good) + 2
    assert metadata["written"] + metadata["duplicates"] == len(good)
    assert metadata["rejected"] == {isolation.DECODER_TIMEOUT: 1, isolation.DECODER_CRASH: 1}
    lines = [json.loads(line) for path in output.glob("rejected-*.jsonl") for line in path.read_text().splitlines()]
    assert {(_name(line["path"]), line["reason"]) for line in lines} == {
        ("hangs.jpg", isolation.DECODER_TIMEOUT), ("crashes.png", isolation.DECODER_CRASH)}
    assert all(line["detail"] for line in lines)

    scored = json.loads(run_python(SCORE_DECODE, good[0], hangs, crashes, good[-1], timeout=120).stdout)
    assert {_name(path): outcome[0] for path, outcome in scored.items()} == {
        good[0].name: 32, "hangs.jpg": isolation.DECODER_TIMEOUT, "crashes.png": isolation.DECODER_CRASH,
        good[-1].name: 32}
    assert "exit code -6" in scored[str(crashes)][1]  # SIGABRT, as a failed assertion in a C codec would end


# decode_stream keeps several files in flight to one child: a hang or a crash in the middle of a stream must cost only
# that file, and the files sent behind it must reach the next child and come back in order.
STREAM = textwrap.dedent(f"""
    import json, sys
    from pathlib import Path
    from beam_pipelines import isolation
    runner = isolation.DecodeRunner({TIMEOUT_SECONDS}, "{FAULTY_DECODER}")
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

    lines = run_python(STREAM, *order, timeout=120).stdout.splitlines()
    outcomes, restarts = json.loads(lines[-2]), int(lines[-1])

    expected = {str(hangs): isolation.DECODER_TIMEOUT, str(crashes): isolation.DECODER_CRASH}
    assert outcomes == [[str(path), expected.get(str(path), "ok")] for path in order]
    assert restarts == 4
