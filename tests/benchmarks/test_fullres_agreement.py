"""benchmarks/fullres_agreement.py: kaggle-fullres predictions joined with the pets-180 split of each photo's copy."""

import json

import pytest

from benchmarks import fullres_agreement


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_names_of_both_folders_map_to_the_same_photo():
    assert fullres_agreement.pets180_key("/data/kaggle-fullres/cat/cat.12.jpg") == ("cat", "12")
    assert fullres_agreement.pets180_key("/data/pets-180/dog/7.jpg") == ("dog", "7")
    assert fullres_agreement.pets180_key("/data/other/bird/7.jpg") is None


def _fact(path, split):
    return {"content_id": path, "phash": 0, "path": path, "label": 0, "split": split, "index": 0, "size": 1,
            "version": 1}


def test_accuracy_is_counted_per_split_of_the_copy_and_duplicates_apart(tmp_path):
    """The version's metadata lists its batches' facts, one of them kept in the earlier version's folder."""
    old, current, scores = tmp_path / "v00001", tmp_path / "v00002", tmp_path / "run"
    for folder in (old, current, scores):
        folder.mkdir()
    _write_jsonl(old / "facts-a.jsonl", [_fact("/p/cat/1.jpg", "train"), _fact("/p/cat/2.jpg", "test")])
    _write_jsonl(current / "facts-b.jsonl", [_fact("/p/dog/1.jpg", "validation"), _fact("/p/dog/2.jpg", "test")])
    metadata = {"batches": [{"batch": "a", "facts": "../v00001/facts-a.jsonl"},
                            {"batch": "b", "facts": "facts-b.jsonl"}]}
    _write_jsonl(scores / "predictions-0.jsonl", [
        {"path": "/f/cat/cat.1.jpg", "predicted_class": "cat"},  # train: not counted outside
        {"path": "/f/cat/cat.2.jpg", "predicted_class": "dog"},  # test, wrong
        {"path": "/f/dog/dog.1.jpg", "predicted_class": "dog"},  # validation, right
        {"path": "/f/dog/dog.2.jpg", "predicted_class": "dog"},  # test, right
        {"path": "/f/dog/dog.3.jpg", "predicted_class": "cat"}])  # no pets-180 copy of its own
    result = fullres_agreement.agreement(str(current), metadata, str(scores))
    assert result["train"] == {"right": 1, "photos": 1, "accuracy": 1.0}
    assert result["test"] == {"right": 1, "photos": 2, "accuracy": 0.5}
    assert result["outside the training split"] == {"right": 2, "photos": 3, "accuracy": 0.6667}
    assert result["dropped as a duplicate"]["photos"] == 1


def test_help_shows_the_whole_description_with_its_usage_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        fullres_agreement.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "dropped as a duplicate have no split of their own" in out  # the description, not only its first line
    assert "--scores work/scores/<run_id>" in out  # the example command, its layout kept


def test_a_scores_root_instead_of_a_run_exits_2_naming_the_newest_run(tmp_path, capsys):
    """`make score` writes SCORES/<run_id>/: given SCORES itself, the tool used to report 0 photos and exit 0."""
    for run_id in ("20261204T204328Z", "20261205T012851Z"):
        (tmp_path / run_id).mkdir()
        _write_jsonl(tmp_path / run_id / "predictions-0.jsonl",
                     [{"path": "/f/cat/cat.1.jpg", "predicted_class": "cat"}])
    (tmp_path / "_incremental").mkdir()
    with pytest.raises(SystemExit) as exit_:
        fullres_agreement.main(["--dataset", str(tmp_path / "no-dataset"), "--scores", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"e.g. --scores {tmp_path / '20261205T012851Z'} (the newest)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        fullres_agreement.main(["--dataset", str(tmp_path), "--scores", str(tmp_path / "_incremental")])
    assert exit_.value.code == 2
    assert "has no predictions-*.jsonl" in capsys.readouterr().err
