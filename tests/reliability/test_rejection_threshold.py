"""Case 3: a folder that is mostly garbage fails preprocessing loudly instead of "succeeding" with a tiny dataset.

(Scoring's twin, --max_error_rate, is tested in tests/beam_pipelines/test_score.py::
test_too_many_rejected_files_fail_the_job_but_keep_the_outputs.)
"""

import json

import pytest

from beam_pipelines import imaging, preprocess
from tests import corpus


def test_a_mostly_garbage_folder_fails_preprocessing_and_keeps_the_old_dataset(tmp_path):
    images, output = tmp_path / "images", tmp_path / "data"
    good = corpus.write_easy_dataset(images, per_class=2, size=32)
    args = [f"--input={images}", f"--output_dir={output}", "--runner=DirectRunner", "--num_shards=1",
            "--image_size=16", "--decode_timeout_seconds=0"]
    before = preprocess.run(args)  # a good dataset is in place
    garbage = [images / "dog" / f"page-{i}.jpg" for i in range(7)]  # e.g. HTML error pages saved by a scraper
    for path in garbage:
        path.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")

    with pytest.raises(SystemExit) as failure:  # exit status 1, with the message on stderr
        preprocess.run([*args, "--overwrite"])
    message = str(failure.value.code)
    assert message.startswith("error: 7 of 11 files (64%) were rejected, more than --max_rejected_fraction 0.5")
    assert f"{imaging.NOT_AN_IMAGE} 7" in message and "raise --max_rejected_fraction" in message

    assert json.loads((output / "metadata.json").read_text()) == before  # the old dataset is untouched
    [failed] = tmp_path.glob("data.failed-*")  # the failed run's output, kept for inspection, never the dataset
    rejected = [json.loads(line) for line in next(failed.glob("rejected-*.jsonl")).read_text().splitlines()]
    assert sorted(row["path"] for row in rejected) == sorted(map(str, garbage))
    assert json.loads((failed / "failure.json").read_text())["error"] in message
    assert not (failed / "metadata.json").exists() and not list(tmp_path.glob("data.staging-*"))

    accepted = preprocess.run([*args, "--overwrite", "--max_rejected_fraction=0.7"])  # the flag is the way out
    assert accepted["written"] + accepted["duplicates"] == len(good)
    assert accepted["rejected"] == {imaging.NOT_AN_IMAGE: len(garbage)}
