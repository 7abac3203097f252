"""Case 3: a folder that is mostly garbage fails preprocessing loudly instead of "succeeding" with a tiny dataset.

(Scoring's twin, --max_error_rate, is tested in tests/beam_pipelines/test_score.py::
test_too_many_rejected_files_fail_the_job_but_keep_the_outputs.)
"""

import json

import pytest

from beam_pipelines import imaging, preprocess
from tests import corpus
from trainer import dataset_contract, storage


def _current(output) -> tuple[str, dict]:
    return dataset_contract.locate(str(output), storage.read_bytes, storage.exists)


def test_a_mostly_garbage_folder_fails_preprocessing_and_keeps_the_current_version(tmp_path):
    images, output = tmp_path / "images", tmp_path / "data"
    good = corpus.write_easy_dataset(images, per_class=2, size=32)
    args = [f"--input={images}", f"--output_dir={output}", "--runner=DirectRunner", "--image_size=32",
            "--decode_timeout_seconds=0", "--skip_if_current"]
    before = preprocess.run(args)  # a good dataset is in place
    garbage = [images / "dog" / f"page-{i}.jpg" for i in range(7)]  # e.g. HTML error pages saved by a scraper
    for path in garbage:
        path.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")

    with pytest.raises(SystemExit) as failure:
        preprocess.run(args)
    assert failure.value.code == 1
    message = str(failure.value)
    assert "7 of 7 files (100%) were rejected, more than --max_rejected_fraction 0.5" in message
    assert f"{imaging.NOT_AN_IMAGE} 7" in message and "raise --max_rejected_fraction" in message

    assert _current(output) == (str(output / before["version"]), before)  # `latest` did not move
    failed = output / "v00002"  # the failed run's version: its rejection list kept for inspection, never current
    rejected = [json.loads(line) for path in failed.glob("rejected-*.jsonl") for line in path.read_text().splitlines()]
    assert sorted(row["path"] for row in rejected) == sorted(map(str, garbage))
    assert json.loads((failed / "failure.json").read_text())["error"] in message
    assert not (failed / dataset_contract.METADATA_FILE).exists()

    accepted = preprocess.run([*args, "--max_rejected_fraction=1"])  # the flag is the way out
    assert accepted["version"] == "v00002" and accepted["unchanged"] == len(good)
    assert accepted["rejected"] == {imaging.NOT_AN_IMAGE: len(garbage)}
