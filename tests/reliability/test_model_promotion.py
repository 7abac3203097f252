"""Case 14: what the trainer publishes for the scoring CronJob to follow (`latest`), driven as `make train` drives it.

A worse model than the current `latest` is kept but not published and the trainer exits 4; a better one replaces it;
the first model needs no baseline; a version made on a machine whose clock is an hour behind still becomes `latest`.
The baselines are hand-built models of known quality (tests/trainer/test_promotion.py's `stripe_model`); the
candidates are real training runs of one step, gated with the thresholds off so that only the comparison decides.
"""

import json
import time

import pytest

from tests.trainer.datasets import write_dataset
from tests.trainer.test_promotion import SIZE, publish_model
from tests.trainer.test_publish import make_export
from tests.trainer.test_train import NO_GATE, SMALL_NET
from trainer import export, model_contract, promotion, publish, train

pytestmark = pytest.mark.slow

ONE_STEP = [*SMALL_NET, *NO_GATE, "--epochs", "1", "--steps_per_epoch", "1", "--batch_size", "8",
            "--warmup_epochs", "0", "--max_regression", "0.01"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), size=SIZE,
                         per_class={"train": 8, "validation": 4, "test": 24}, num_shards=1)


def run_trainer(dataset, model_dir, export_root, *flags) -> int:
    return train.main(["--data_dir", str(dataset), "--model_dir", str(model_dir), "--export_dir", str(export_root),
                       *ONE_STEP, *flags])


def test_a_worse_model_is_not_published_and_the_trainer_exits_4(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    publish_model(root, 1, "1700000000")  # today's latest: right on nearly every test image
    before = publish.read_latest(str(root))

    assert run_trainer(dataset, tmp_path / "model", root) == promotion.EXIT_NOT_BLESSED
    out = capsys.readouterr().out
    assert publish.read_latest(str(root)) == before  # the CronJob keeps scoring with the previous model
    recorded = json.loads((tmp_path / "model" / "metrics.json").read_text())["promotion"]
    assert recorded["decision"] == "not_blessed" and not recorded["published"]
    assert recorded["baseline"]["version"] == "1700000000" and recorded["baseline"]["metrics"]["accuracy"] >= 0.95
    assert recorded["candidate"]["examples"] == 48 and recorded["candidate"]["accuracy"] < 0.94
    kept = json.loads((root / recorded["version"] / model_contract.MODEL_INFO).read_text())
    assert not kept["promotion"]["blessed"] and kept["promotion"]["reasons"] == recorded["reasons"]
    assert "baseline accuracy" in " ".join(recorded["reasons"])
    assert "baseline (latest: version 1700000000) on the same split" in out and "NOT BLESSED" in out

    # Run again (a Job retry): nothing is trained or published again, and the exit status says the same.
    assert run_trainer(dataset, tmp_path / "model", root) == promotion.EXIT_NOT_BLESSED
    assert "already holds a finished run" in capsys.readouterr().err
    assert publish.list_versions(str(root)) == ["1700000000", recorded["version"]]


def test_a_better_model_is_published(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    publish_model(root, -1, "1700000000")  # today's latest: wrong on nearly every test image

    assert run_trainer(dataset, tmp_path / "model", root) == 0
    recorded = json.loads((tmp_path / "model" / "metrics.json").read_text())["promotion"]
    assert recorded["decision"] == "blessed" and recorded["published"]
    assert publish.read_latest(str(root)).version == recorded["version"] == recorded["latest"]
    assert recorded["baseline"]["metrics"]["accuracy"] <= 0.05
    assert "BLESSED: published version" in capsys.readouterr().out


def test_the_first_model_needs_no_baseline(dataset, tmp_path, capsys):
    root = tmp_path / "export"
    assert run_trainer(dataset, tmp_path / "model", root) == 0
    recorded = json.loads((tmp_path / "model" / "metrics.json").read_text())["promotion"]
    assert recorded["baseline"] is None and recorded["published"]
    assert publish.read_latest(str(root)).version == recorded["version"]
    assert "the first model needs no baseline" in capsys.readouterr().out


def test_a_version_made_with_a_clock_an_hour_behind_still_becomes_latest(tmp_path, monkeypatch):
    root = tmp_path / "export"
    now = int(time.time())
    publish.publish_export(str(make_export(tmp_path / "published", str(now))), str(root), str(now))

    monkeypatch.setattr(time, "time", lambda: now - 3600)  # the training machine's clock
    staging = make_export(tmp_path / "new", "unused")
    (staging / model_contract.MODEL_INFO).unlink()
    published = export.publish_staged(str(staging), str(root), model_name="tiny", class_names=["cat", "dog"],
                                      input_size=[SIZE, SIZE])
    assert model_contract.version_key(published.version) > now
    assert published.move.moved and publish.read_latest(str(root)).version == published.version
