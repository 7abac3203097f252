"""Symlinks and other entries that are not plain files never vanish from scoring or preprocessing: a symlinked folder
is followed once (a link back up the tree, or a second link to a folder already walked, is dead-lettered as
folder_listed_twice instead of walked again), a broken link is dead-lettered as broken_symlink, a FIFO as
not_a_regular_file without ever being opened (a read would block the worker for ever), and the accounting closes:
matched = scored + failed + skipped.

The scoring job runs as its own process with a deadline, so a FIFO that were opened fails the test instead of
hanging it.
"""

import json
import os

import pytest

from beam_pipelines import file_listing, score
from tests import corpus
from tests.reliability.conftest import job_env, preprocess_here, read_dataset, read_outcomes, run_job, score_command

pytestmark = pytest.mark.slow


def test_symlinks_are_followed_once_and_broken_links_and_fifos_are_dead_lettered(tiny_export, tmp_path):
    root, elsewhere, output = tmp_path / "images", tmp_path / "elsewhere", tmp_path / "scores"
    cats = corpus.write_easy_dataset(root, per_class=2, size=32, class_dirs=("cat",))
    dogs = corpus.write_easy_dataset(root, per_class=2, size=32, class_dirs=("dog",), seed=1)
    outside = corpus.write_easy_dataset(elsewhere, per_class=2, size=32, class_dirs=("more",), seed=2)
    (root / "linked").symlink_to(elsewhere / "more", target_is_directory=True)  # a folder kept elsewhere: followed
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)  # a loop back to the top
    (root / "cat" / "dogs_again").symlink_to(root / "dog", target_is_directory=True)  # the same folder twice
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # broken
    (root / "cat" / "alias.jpg").symlink_to(cats[0])  # a link to a file is a file under its own name
    os.mkfifo(root / "dog" / "camera.jpg")  # e.g. a capture pipe someone pointed the folder at

    run_job(score_command("--model", tiny_export, "--input", root, "--output_dir", output, "--run_id", "r",
                          "--files_per_batch", 3), env=job_env(decoder=None), timeout=240)

    predictions, errors = read_outcomes(output / "r")
    reasons = {path: row["reason"] for path, row in errors.items()}
    # The dog folder is walked once, under whichever of its two paths the walk met first; the other is reported.
    walked_dogs = root / "dog" if str(root / "cat" / "dogs_again") in reasons else root / "cat" / "dogs_again"
    twice = str(root / "cat" / "dogs_again") if walked_dogs == root / "dog" else str(root / "dog")
    assert set(predictions) == ({str(path) for path in cats} | {str(walked_dogs / path.name) for path in dogs}
                                | {str(root / "linked" / path.name) for path in outside} | {str(root / "cat" /
                                                                                               "alias.jpg")})
    expected = {str(root / "cat" / "up"): file_listing.SYMLINK_LOOP, twice: file_listing.SYMLINK_LOOP,
                str(root / "cat" / "gone.jpg"): file_listing.BROKEN_SYMLINK}
    if walked_dogs == root / "dog":  # the FIFO is inside the dog folder: listed under the path that was walked
        expected[str(root / "dog" / "camera.jpg")] = file_listing.NOT_A_FILE
    else:
        expected[str(root / "cat" / "dogs_again" / "camera.jpg")] = file_listing.NOT_A_FILE
    assert reasons == expected
    assert all(row["detail"] for row in errors.values())
    summary = json.loads((output / "r" / score.SUMMARY_FILE).read_text())
    assert summary["matched"] == summary["scored"] + summary["failed"] + summary["skipped"] == len(predictions) + 4


def test_preprocessing_follows_symlinked_folders_once_and_lists_broken_links_with_their_reason(tmp_path):
    """The same listing as scoring's, in preprocessing: every file in the dataset or in rejected-*.jsonl, and the job's
    own check that files read = written + duplicates + rejected holds. (The FIFO case is the scoring test's: it needs
    a job in its own process, with a deadline.)"""
    root, elsewhere, output = tmp_path / "images", tmp_path / "elsewhere", tmp_path / "data"
    cats = corpus.write_easy_dataset(root, per_class=2, size=32, class_dirs=("cat",))
    outside = corpus.write_easy_dataset(elsewhere, per_class=2, size=32, class_dirs=("dog",), seed=2)
    (root / "dog").symlink_to(elsewhere / "dog", target_is_directory=True)  # a class folder kept elsewhere
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")

    metadata = preprocess_here("--input", root, "--output_dir", output, "--image_size", 32)

    sources, rejections = read_dataset(output)
    assert set(sources) == {str(path) for path in cats} | {str(root / "dog" / path.name) for path in outside}
    assert {path: row["reason"] for path, row in rejections.items()} == {
        str(root / "cat" / "up"): file_listing.SYMLINK_LOOP,
        str(root / "cat" / "gone.jpg"): file_listing.BROKEN_SYMLINK}
    assert metadata["read"] == metadata["listed"] == len(sources) + 2
