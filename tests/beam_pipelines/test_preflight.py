"""Launch checks both Beam jobs share: gs:// paths reachable within seconds with a clear message, and --check_only
validating everything while writing nothing."""

import json
import socket
import threading

import pytest

from beam_pipelines import preprocess, score
from tests.beam_pipelines.test_score import export_tiny_model
from tests.corpus import write_easy_dataset
from trainer import credentials


@pytest.fixture
def silent_endpoint(monkeypatch):
    """A TCP server that accepts connections and never answers: what a GCS client sees behind a broken network or
    a metadata server that never replies."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "catsdogs-test")
    yield
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_an_unreachable_bucket_fails_the_scoring_launch_within_its_deadline_naming_the_usual_causes(silent_endpoint,
                                                                                                     tmp_path):
    with pytest.raises(SystemExit) as failure:
        score.run(["--runner", "DirectRunner", "--model", "gs://models/export", "--input", "gs://images/incoming/",
                   "--output_dir", str(tmp_path / "scores")])
    message = str(failure.value)
    assert failure.value.code == 2 and f"no answer within {credentials.REACH_SECONDS:g} s" in message
    for cause in ("Application Default Credentials", "Workload Identity", "STORAGE_EMULATOR_HOST"):
        assert cause in message
    assert not (tmp_path / "scores").exists()


def test_preprocessing_checks_its_gcs_output_the_same_way(silent_endpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(credentials, "REACH_SECONDS", 2.0)
    write_easy_dataset(tmp_path / "in", per_class=1, size=16)
    with pytest.raises(SystemExit, match=r"cannot reach gs://datasets \(no answer within 2 s\)") as failure:
        preprocess.run([f"--input={tmp_path / 'in'}", "--output_dir=gs://datasets/pets", "--runner=DirectRunner"])
    assert failure.value.code == 2


def test_check_only_validates_everything_and_writes_nothing(tmp_path, capsys):
    images = tmp_path / "images"
    write_easy_dataset(images, per_class=4, size=32)
    (images / "cat" / "broken.jpg").write_bytes(b"not an image")
    dataset, scores = tmp_path / "data", tmp_path / "scores"
    report = preprocess.run([f"--input={images}", f"--output_dir={dataset}", "--runner=DirectRunner",
                             "--check_only"])
    assert (report["files"], report["would_write"], report["output_writable"]) == (9, f"{dataset}/v00001", "yes")
    assert len(report["sample_decoded"]) == 5
    export_tiny_model(tmp_path / "model" / "export")
    report = score.run(["--runner", "DirectRunner", "--model", str(tmp_path / "model" / "export"), "--input",
                        str(images), "--output_dir", str(scores), "--check_only"])
    assert report["files"] == 9 and report["model_version"] == "1700000000"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert not dataset.exists() and not scores.exists()


def test_check_only_exits_2_when_the_output_cannot_be_written(tmp_path, capsys):
    images = tmp_path / "images"
    write_easy_dataset(images, per_class=1, size=16)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the output folder's parent should be")
    with pytest.raises(SystemExit, match="not writable") as failure:
        preprocess.run([f"--input={images}", f"--output_dir={blocked / 'data'}", "--runner=DirectRunner",
                        "--check_only"])
    assert failure.value.code == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output_writable"] != "yes"
