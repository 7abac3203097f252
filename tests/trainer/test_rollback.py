"""trainer/rollback.py: `latest` moved back to a verified earlier version, refusing broken ones, on local disk and on
GCS (fake-gcs-server, which enforces generation preconditions as GCS does)."""

import json
from pathlib import Path

import pytest

from beam_pipelines import model_handler
from tests.gcs_servers import fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from tests.trainer.test_publish import make_export
from trainer import export, model_contract, publish, rollback


def publish_version(root, tmp_path: Path, version: str, *, weights: bytes | None = None, promotion=None,
                    move: bool = True) -> str:
    """A small version with a valid model_info.json (real checksums of its stand-in files)."""
    staging = make_export(tmp_path / f"staging-{version}", version, weights or version.encode())
    (staging / model_contract.MODEL_INFO).unlink()
    published = export.publish_staged(str(staging), str(root), model_name="tiny", class_names=["cat", "dog"],
                                      input_size=[8, 8], version=version, promotion=promotion, move_latest=move)
    return published.uri


def latest(root) -> str:
    return publish.read_latest(str(root)).version


def test_rollback_moves_latest_back_to_a_verified_version(tmp_path, capsys):
    root = tmp_path / "export"
    publish_version(root, tmp_path, "100")
    publish_version(root, tmp_path, "200")
    assert latest(root) == "200"

    assert rollback.main(["to", "--export_dir", str(root), "--version", "100"]) == 0
    info_sha = model_contract.sha256_bytes((root / "100" / model_contract.MODEL_INFO).read_bytes())
    assert publish.read_latest(str(root)) == model_contract.Pointer("100", info_sha)
    assert "latest -> version 100" in capsys.readouterr().out
    assert model_handler.resolve_and_check_model(str(root), None)[0] == f"{root}/100"  # what the scorer loads now

    assert rollback.main(["list", "--export_dir", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "100" in listing and "<- latest" in listing.splitlines()[1] and "200" in listing.splitlines()[2]


@pytest.mark.parametrize(("version", "damage", "message"), [
    ("100", lambda d: (d / "variables" / "variables.index").write_bytes(b"other"), "variables.index has sha256"),
    ("100", lambda d: (d / "saved_model.pb").unlink(), "saved_model.pb is listed in model_info.json but missing"),
    ("100", lambda d: (d / model_contract.MODEL_INFO).unlink(), "not a complete version"),
    ("100", lambda d: (d / model_contract.MODEL_INFO).write_text("{"), "not valid JSON"),
    ("150", lambda d: None, "not a complete version (no model_info.json); versions there: 100, 200"),
    ("../100", lambda d: None, "not a version"),
])
def test_rollback_refuses_a_broken_version(version, damage, message, tmp_path, capsys):
    root = tmp_path / "export"
    publish_version(root, tmp_path, "100")
    publish_version(root, tmp_path, "200")
    damage(root / "100")
    before = (root / "latest").read_bytes()

    assert rollback.main(["to", "--export_dir", str(root), "--version", version]) == 1
    assert message in capsys.readouterr().err
    assert (root / "latest").read_bytes() == before


def test_rollback_to_a_version_the_gate_refused_needs_allow_unblessed(tmp_path, capsys):
    root = tmp_path / "export"
    publish_version(root, tmp_path, "100")
    refused = {"blessed": False, "decision": "not_blessed", "reasons": ["accuracy >= min_accuracy: 0.5000"]}
    publish_version(root, tmp_path, "200", promotion=refused, move=False)

    assert rollback.main(["to", "--export_dir", str(root), "--version", "200"]) == 1
    err = capsys.readouterr().err
    assert "did not pass the promotion gate (accuracy >= min_accuracy: 0.5000)" in err and "--allow_unblessed" in err
    assert latest(root) == "100"
    assert rollback.main(["to", "--export_dir", str(root), "--version", "200", "--allow_unblessed"]) == 0
    assert latest(root) == "200"


def test_an_old_pointer_is_refused_by_the_scorer_and_rewritten_by_rollback(tmp_path):
    root = tmp_path / "export"
    publish_version(root, tmp_path, "100")
    (root / "latest").write_text("100\n")  # as catsdogs wrote it before the pointer recorded a sha256

    with pytest.raises(model_handler.ModelError, match="old plain-text format") as refused:
        model_handler.resolve_and_check_model(str(root), None)
    assert f"python -m trainer.rollback to --export_dir {root} --version 100" in str(refused.value)
    assert rollback.main(["to", "--export_dir", str(root), "--version", "100"]) == 0
    assert model_handler.resolve_and_check_model(str(root), None)[0] == f"{root}/100"


def test_a_damaged_pointer_is_repaired_by_rollback(tmp_path, capsys):
    root = tmp_path / "export"
    publish_version(root, tmp_path, "100")
    (root / "latest").write_bytes(b"\x00garbage")
    assert rollback.main(["to", "--export_dir", str(root), "--version", "100"]) == 0
    assert "replacing a damaged latest" in capsys.readouterr().err and latest(root) == "100"


def test_gcs_rollback_and_a_publisher_that_moves_latest_meanwhile(fake_gcs_bucket, tmp_path, monkeypatch, capsys):
    root = f"{fake_gcs_bucket}/model/export"
    publish_version(root, tmp_path, "100")
    publish_version(root, tmp_path, "200")
    assert rollback.main(["to", "--export_dir", root, "--version", "100"]) == 0
    assert latest(root) == "100"

    # A trainer moves latest to 300 between the rollback's read of `latest` and its conditional write (412).
    real_read = publish._read_latest_gcs
    reads = []

    def read_then_a_trainer_publishes(export_root, client=None):
        seen = real_read(export_root, client)
        reads.append(seen)
        if len(reads) == 1:
            monkeypatch.setattr(publish, "_read_latest_gcs", real_read)
            publish_version(root, tmp_path, "300")
            monkeypatch.setattr(publish, "_read_latest_gcs", read_then_a_trainer_publishes)
        return seen

    monkeypatch.setattr(publish, "_read_latest_gcs", read_then_a_trainer_publishes)
    assert rollback.main(["to", "--export_dir", root, "--version", "200"]) == 1
    assert "latest not moved" in capsys.readouterr().err
    assert [seen.version for seen, _ in reads] == ["100", "300"]  # the write was refused (412), then re-read
    assert latest(root) == "300"  # the trainer's newer model stays


def test_gcs_rollback_refuses_a_broken_version(fake_gcs_bucket, tmp_path, capsys):
    from google.cloud import storage

    root = f"{fake_gcs_bucket}/model/export"
    publish_version(root, tmp_path, "100")
    publish_version(root, tmp_path, "200")
    bucket = storage.Client().bucket(fake_gcs_bucket[len("gs://"):])
    bucket.blob("model/export/100/variables/variables.index").upload_from_string(b"tampered")
    assert rollback.main(["to", "--export_dir", root, "--version", "100"]) == 1
    assert "variables.index has sha256" in capsys.readouterr().err
    assert json.loads(bucket.blob("model/export/latest").download_as_bytes())["version"] == "200"
