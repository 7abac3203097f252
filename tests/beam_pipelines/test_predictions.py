"""predictions.py: the prediction-row contract, in each of the three file formats."""

import csv
import io
import json

import pytest

from beam_pipelines import predictions

CLASSES = ("cat", "dog")


def _rows():
    return [predictions.prediction_row(path, p, CLASSES, 0.5, 1796000000, "hourly-1", "2026-12-02T06:00:00Z")
            for path, p in (("/in/Dog/1.jpg", 0.9), ("/in/Cat/2.jpg", 0.2), ("/in/x, \"y\".jpg", 0.5))]


def test_a_row_names_its_class_by_the_threshold_and_its_confidence_is_the_predicted_class_probability():
    dog, cat, edge = _rows()
    assert (dog["predicted_class"], dog["confidence"]) == ("dog", 0.9)
    assert (cat["predicted_class"], cat["confidence"]) == ("cat", pytest.approx(0.8))
    assert edge["predicted_class"] == "dog"  # the threshold itself counts as the positive class
    assert tuple(dog) == predictions.row_fields(CLASSES) and "dog_probability" in dog


def test_a_name_that_is_not_utf8_is_written_as_valid_utf8():
    row = predictions.prediction_row("/in/caf\udce9.jpg", 0.7, CLASSES, 0.5, 1, "r", "t")
    row["path"].encode("utf-8")  # a lone surrogate would raise here
    assert "caf" in row["path"] and row["path"] != "/in/caf\udce9.jpg"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_each_format_reads_back_to_the_same_rows(fmt):
    rows = _rows()
    data = predictions.encode_rows(rows, fmt, CLASSES)
    if fmt == "jsonl":
        back = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    elif fmt == "csv":
        back = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        for row in back:  # CSV carries text: the numbers parse back exactly
            for key in ("dog_probability", "confidence"):
                row[key] = float(row[key])
            row["model_version"] = int(row["model_version"])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        assert table.schema == predictions.parquet_schema(CLASSES)
        back = table.to_pylist()
    assert back == rows


def test_a_folder_named_for_a_class_says_whether_the_prediction_agrees():
    assert predictions.folder_label_key("/in/Dogs/1.jpg", "dog", CLASSES) == "folder_label:agrees"
    assert predictions.folder_label_key("/in/cat/2.jpg", "dog", CLASSES) == "folder_label:differs"
    assert predictions.folder_label_key("/in/holiday/3.jpg", "dog", CLASSES) is None
