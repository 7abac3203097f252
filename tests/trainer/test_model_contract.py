"""trainer/model_contract.py: the export layout's names, model_info.json validation, the `latest` pointer, versions."""

import json

import pytest

from trainer import model_contract
from trainer.model_contract import ModelError, Pointer

SHA = "ab" * 32


def info(**changes) -> dict:
    base = model_contract.build_model_info(
        version="1700000000", model_name="tiny", class_names=["cat", "dog"], input_size=[32, 32],
        files={"saved_model.pb": SHA, "variables/variables.index": SHA}, metrics={}, training_data={},
        code_version="test", created_at="2026-01-01T00:00:00Z")
    return {**base, **changes}


def test_a_built_model_info_round_trips_through_its_bytes():
    data = model_contract.format_model_info(info())
    assert model_contract.parse_model_info(data, "x") == info()
    assert model_contract.is_blessed(info())  # no promotion record: made before the gate, published as latest


@pytest.mark.parametrize(("change", "message"), [
    ({"input_size": [32]}, "input_size must be [height, width]"),
    ({"input_size": [32, True]}, "input_size must be [height, width]"),
    ({"class_names": ["cat", "cat"]}, "class_names must be two distinct names"),
    ({"signatures": {"bytes": "serving_default"}}, "must name the pixels signature"),
    ({"files": {}}, "`files` must map every exported file"),
    ({"files": {"saved_model.pb": "not-a-sha"}}, "must be a sha256"),
    ({"model_version": None}, "model_version must be a non-empty string"),
    ({"model_version": "../1"}, "model_version must be a non-empty string"),
    ({"model_name": ""}, "model_name must be a non-empty string"),
    ({"format_version": 99}, "format_version 99 is not one this code reads"),
    ({"promotion": {"reasons": []}}, "promotion must be an object with a boolean `blessed`"),
])
def test_each_malformed_field_is_named(change, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model_contract.validate_model_info(info(**change), "export/1/model_info.json")
    with pytest.raises(ModelError):  # nor can a writer produce it
        model_contract.format_model_info(info(**change))


def test_missing_fields_are_listed_and_the_callers_fix_is_used():
    broken = info()
    del broken["input_size"], broken["files"]
    with pytest.raises(ModelError, match="lacks required field.*input_size, files; pass --model"):
        model_contract.validate_model_info(broken, "m", fix="pass --model another export")


@pytest.mark.parametrize(("key", "problem"), [
    ("../../etc/cron.d/x", "'..' part"), ("variables/../../x", "'..' part"), ("./saved_model.pb", "'.' or"),
    ("/etc/passwd", "absolute path"), ("C:/x", "absolute path"), ("variables\\..\\x", "backslash"),
    ("variables//x", "empty part"), ("variables/", "empty part"), ("", "is empty"), ("a\nb", "control character"),
    ("model_info.json", "never listed"),
])
def test_a_files_key_that_could_leave_the_version_directory_is_refused(key, problem):
    assert problem in model_contract.file_key_problem(key)
    with pytest.raises(ModelError, match=f"`files` key .* {problem.split()[0]}"):
        model_contract.validate_model_info(info(files={"saved_model.pb": SHA, key: SHA}), "m")


def test_plain_relative_keys_are_accepted():
    for key in ("saved_model.pb", "variables/variables.data-00000-of-00001", "assets/vocab.txt", "a..b/c"):
        assert model_contract.file_key_problem(key) is None


def test_the_pointer_records_version_and_sha256_and_reads_back():
    pointer = Pointer("1700000000", SHA)
    data = model_contract.format_pointer(pointer)
    assert json.loads(data) == {"format": 2, "version": "1700000000", "model_info_sha256": SHA}
    assert model_contract.parse_pointer(data, "root/latest") == pointer
    assert not pointer.legacy
    with pytest.raises(ModelError):
        model_contract.format_pointer(Pointer("1700000000", None))  # never written without the sha256


def test_an_old_plain_text_pointer_is_parsed_without_a_sha256():
    pointer = model_contract.parse_pointer(b"1700000000\n", "root/latest")
    assert pointer == Pointer("1700000000", None) and pointer.legacy


@pytest.mark.parametrize(("data", "message"), [
    (b"../../planted\n", "not a version"),
    (b'{"format": 2, "version": "../x", "model_info_sha256": "' + SHA.encode() + b'"}', "not a version"),
    (b'{"format": 2, "version": "12"}', "model_info_sha256"),
    (b'{"format": 7, "version": "12", "model_info_sha256": "' + SHA.encode() + b'"}', "format 7"),
    (b"[1, 2]", "not a version"),
    (b"{oops", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"1" * 5000, "bytes long"),
])
def test_a_pointer_that_is_not_one_is_refused_with_the_command_that_fixes_it(data, message):
    with pytest.raises(ModelError, match=message) as refused:
        model_contract.parse_pointer(data, "gs://b/model/export/latest")
    assert "python -m trainer.rollback to --export_dir gs://b/model/export" in str(refused.value)


def test_next_version_never_goes_back_nor_collides():
    assert model_contract.next_version(1_700_000_000.9, []) == "1700000000"
    an_hour_behind = 1_700_000_000 - 3600
    assert model_contract.next_version(an_hour_behind, ["1700000000", "12", "junk"]) == "1700000001"
    assert model_contract.next_version(1_800_000_000, ["1700000000"]) == "1800000000"


def test_verify_files_names_a_missing_and_a_changed_file():
    hashes = {"m/saved_model.pb": SHA, "m/variables/variables.index": "cd" * 32}
    with pytest.raises(ModelError, match="variables.index has sha256 cdcd.* records abab"):
        model_contract.verify_files("m", info(), hashes.get)
    del hashes["m/variables/variables.index"]
    with pytest.raises(ModelError, match="variables.index is listed in model_info.json but missing"):
        model_contract.verify_files("m", info(), hashes.get)
