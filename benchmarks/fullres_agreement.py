"""How a scoring run on ../shared/data/kaggle-fullres did on the photos the model never trained on.

kaggle-fullres holds the full-size originals of photos that are also in pets-180 (`cat/cat.N.jpg` there is
`cat/N.jpg` in pets-180). A model trained on pets-180 saw most of them; this joins the scoring run's predictions with
the dataset's split of each pets-180 copy (the facts files its metadata.json lists, earlier versions' included) and
reports the accuracy against the folder label per
split, so the full-resolution path can be compared with the test-split figure. Photos whose pets-180 copy was
dropped as a duplicate have no split of their own and are counted apart. What README's "Results" quotes.

    .venv/bin/python -m benchmarks.fullres_agreement --dataset work/data --scores work/scores/<run_id>
"""

import argparse
import glob
import json
import os
import re
import sys

from beam_pipelines import records
from trainer import dataset_contract, storage

_KAGGLE_NAME = re.compile(r"(?P<label>cat|dog)\.(?P<number>\d+)\.[^/]+$")


def _prediction_files(scores_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(scores_dir, "predictions-*.jsonl")))


def _prediction_rows(scores_dir: str):
    for path in _prediction_files(scores_dir):
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def pets180_key(path: str) -> tuple[str, str] | None:
    """("cat", "12") for .../cat/12.jpg (pets-180) or .../cat.12.jpg (the Kaggle name); None for anything else."""
    match = _KAGGLE_NAME.search(path)
    if match:
        return match["label"], match["number"]
    parts = path.replace("\\", "/").rsplit("/", 2)
    if len(parts) == 3 and parts[1].lower() in ("cat", "dog"):
        return parts[1].lower(), os.path.splitext(parts[2])[0]
    return None


def agreement(version_dir: str, metadata: dict, scores_dir: str) -> dict:
    split_of = {}
    for entry in metadata["batches"]:  # a grown version's older batches live in earlier versions' folders
        for fact in records.read_facts(dataset_contract.join(version_dir, entry["facts"]), entry["batch"], True):
            key = pets180_key(fact.path)
            if key:
                split_of[key] = fact.split
    by_split: dict[str, list[int]] = {}
    for row in _prediction_rows(scores_dir):
        key = pets180_key(row["path"])
        if key is None:
            continue
        split = split_of.get(key, "dropped as a duplicate")
        right = int(row["predicted_class"] == key[0])
        by_split.setdefault(split, [0, 0])
        by_split[split][0] += right
        by_split[split][1] += 1
    outside = [sum(by_split.get(s, [0, 0])[i] for s in ("validation", "test")) for i in (0, 1)]
    by_split["outside the training split"] = outside
    return {split: {"right": right, "photos": photos, "accuracy": round(right / photos, 4) if photos else None}
            for split, (right, photos) in sorted(by_split.items())}


def _scores_error(scores_dir: str) -> str | None:
    """Why --scores is not a scoring run's directory (None when it is): a root of runs names its newest run."""
    if _prediction_files(scores_dir):
        return None
    runs = [run for run in sorted(glob.glob(os.path.join(scores_dir, "*"))) if _prediction_files(run)]
    if runs:
        return (f"--scores {scores_dir} holds scoring runs, not predictions: pass one run's directory, "
                f"e.g. --scores {runs[-1]} (the newest)")
    return f"--scores {scores_dir} has no predictions-*.jsonl: pass a scoring run's directory, WORKDIR/scores/<run_id>"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--dataset", required=True, help="the pets-180 dataset the model was trained on (its root, "
                                                         "whose `latest` names the version, or a version directory)")
    parser.add_argument("--scores", required=True, help="the scoring run's directory (predictions-*.jsonl)")
    args = parser.parse_args(argv)
    problem = _scores_error(args.scores)
    if problem:
        parser.error(problem)
    version_dir, metadata = dataset_contract.locate(args.dataset, storage.read_bytes, storage.exists)
    result = agreement(version_dir, metadata, args.scores)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
