"""changes.py: the rule that joins a listed file with what the current dataset version knows of its path."""

import pytest

from beam_pipelines import changes, grouping, records
from beam_pipelines.file_listing import FileRef

LISTED = (FileRef("/in/cat.1.jpg", size=100, mtime=1.0, version=7), "batch-0001")
RECORD = grouping.Fact("c" * 64, 5, "/in/cat.1.jpg", 0, "v1-b1", "test", 3, True, size=100, version=7)
REJECTED = (100, 7, "not_an_image", '{"path": "/in/cat.1.jpg", "reason": "not_an_image"}')


def _out(listed, known):
    return list(changes.classify(listed, known))


def test_an_unchanged_record_is_kept_and_never_decoded_again():
    assert _out(LISTED, ("record", RECORD)) == [("kept", RECORD), ("count", "unchanged")]


@pytest.mark.parametrize("ref", [LISTED[0]._replace(size=101), LISTED[0]._replace(version=8)], ids=["size", "version"])
def test_a_changed_file_drops_its_old_record_and_is_decoded(ref):
    assert _out((ref, "batch-0001"), ("record", RECORD)) == [
        ("change", grouping.Change("v1-b1", RECORD, "drop", reason=records.REMOVED)),
        ("decode", ref), ("count", "changed")]


def test_a_gone_file_drops_its_record_and_a_new_file_is_decoded():
    assert _out(None, ("record", RECORD)) == [
        ("change", grouping.Change("v1-b1", RECORD, "drop", reason=records.REMOVED))]
    assert _out(LISTED, None) == [("decode", LISTED[0]), ("count", "new")]


def test_rejections_are_carried_while_the_file_is_unchanged_and_duplicates_are_checked_again():
    assert _out(LISTED, ("rejected", REJECTED)) == [("carried", REJECTED[3]), ("count", "unchanged_rejected")]
    duplicate = REJECTED[:2] + ("duplicate", REJECTED[3])  # the copy it duplicated may be gone since
    assert _out(LISTED, ("rejected", duplicate)) == [("decode", LISTED[0]), ("count", "rechecked_duplicates")]
    fixed = (LISTED[0]._replace(version=9), "batch-0001")  # replaced by a readable file: decoded
    assert _out(fixed, ("rejected", REJECTED)) == [("decode", fixed[0]), ("count", "changed")]
    assert _out(None, ("rejected", REJECTED)) == [("count", "removed_rejected")]
