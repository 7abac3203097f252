"""incremental.py: SkipAccounted's rule (the watermark, recent keys carried forward, the retry list, content changes,
files a killed attempt committed) and the state object's compare-and-swap."""

import json

import numpy as np

from beam_pipelines import file_listing, incremental
from trainer import storage

WATERMARK = 1_000.0
NEXT_WATERMARK = 2_000.0


def ref(path: str, mtime: float, version: int = 1, size: int = 10) -> file_listing.FileRef:
    return file_listing.FileRef(path, size, mtime, version)


def state(recent=(), retry=(), watermark=WATERMARK) -> incremental.State:
    return incremental.State(watermark, incremental.pack(incremental.record_key(r) for r in recent), tuple(retry),
                             "earlier", {}, "test")


def selector(*states, resume_keys_path=None) -> incremental.SkipAccounted:
    select = incremental.SkipAccounted(states, NEXT_WATERMARK, resume_keys_path)
    select.open()
    return select


def test_a_file_that_appeared_before_the_watermark_is_skipped_and_a_later_one_is_not():
    select = selector(state())
    assert select(ref("/in/old.jpg", WATERMARK - 1)) == incremental.SKIPPED
    assert select(ref("/in/new.jpg", WATERMARK)) is None
    assert selector()(ref("/in/old.jpg", WATERMARK - 1)) is None  # no earlier run: everything is new


def test_recent_keys_skip_files_inside_the_margin_and_are_carried_while_still_inside_the_next_one():
    near_old, near_new = ref("/in/a.jpg", WATERMARK + 10), ref("/in/b.jpg", NEXT_WATERMARK + 10)
    select = selector(state(recent=[near_old, near_new]))
    assert select(near_old) == incremental.SKIPPED
    assert select(near_new) == incremental.SKIPPED
    assert select(ref("/in/c.jpg", WATERMARK + 10)) is None  # inside the margin but not accounted for
    carried = select.notes()["recent"]
    assert carried == [incremental.record_key(near_new)]  # near_old is below the next watermark: not needed again
    assert select.notes() == {}  # handed over once


def test_a_file_on_the_retry_list_is_tried_again_even_when_older_than_the_watermark():
    odd = "/in/caf\udce9.jpg"  # a local name that is not UTF-8, as Python holds it
    select = selector(state(retry=["/in/timed_out.jpg", storage.display_path(odd)]))
    assert select(ref("/in/timed_out.jpg", WATERMARK - 100)) is None
    assert select(ref(odd, WATERMARK - 100)) is None
    assert select(ref("/in/fine.jpg", WATERMARK - 100)) == incremental.SKIPPED


def test_a_content_change_gives_a_new_key_and_the_file_is_scored_again():
    before = ref("/in/a.jpg", WATERMARK + 10, version=1)
    select = selector(state(recent=[before]))
    assert select(before) == incremental.SKIPPED
    assert select(before._replace(version=2)) is None  # rewritten in place (new mtime / generation)
    assert select(before._replace(size=11)) is None
    assert select(before._replace(path="/in/renamed.jpg")) is None


def test_any_of_several_records_accounting_for_a_file_skips_it():
    select = selector(state(watermark=10.0), state(recent=[ref("/in/a.jpg", 50.0)], watermark=100.0))
    assert select(ref("/in/a.jpg", 50.0)) == incremental.SKIPPED
    assert select(ref("/in/b.jpg", 5.0)) == incremental.SKIPPED
    assert select(ref("/in/c.jpg", 150.0)) is None


def test_files_committed_by_a_killed_attempt_are_done_before_whatever_the_records_say(tmp_path):
    keys = tmp_path / "resume.keys"
    committed = ["/in/a.jpg", "/in/caf\udce9.jpg"]
    keys.write_bytes(incremental.unpack(incremental.pack(incremental.path_hash(p) for p in committed)).tobytes())
    select = selector(state(), resume_keys_path=str(keys))
    assert [select(ref(path, WATERMARK + 50)) for path in committed] == [incremental.DONE_BEFORE] * 2
    assert select(ref("/in/b.jpg", WATERMARK + 50)) is None


def test_keys_survive_pack_and_unpack_and_are_found_by_search():
    keys = [incremental.path_hash(f"/in/{i}.jpg") for i in range(1000)]
    unpacked = incremental.unpack(incremental.pack(keys + keys[:10]))
    assert len(unpacked) == 1000 and np.all(np.diff(unpacked.astype(np.float64)) > 0)
    assert all(incremental.contains(unpacked, key) for key in keys[::37])
    assert not incremental.contains(unpacked, incremental.path_hash("/in/other.jpg"))
    assert not incremental.contains(incremental.unpack(""), 1)


def test_save_moves_the_watermark_forward_only_and_load_reads_one_state_per_output(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    saved = {"watermark": 500.0, "recent": incremental.pack([1, 2]), "retry": ["/in/x.jpg"], "run_id": "r1",
             "class_shares": {"cat": 0.5, "dog": 0.5}}
    assert incremental.save(str(first), "7", saved)
    assert not incremental.save(str(first), "7", {**saved, "watermark": 400.0, "run_id": "late"})  # a slower run
    assert incremental.save(str(first), "7", {**saved, "watermark": 600.0, "run_id": "r2"})
    assert json.loads((first / incremental.STATE_DIR / "model-7.json").read_text())["run_id"] == "r2"

    [loaded] = incremental.load([str(first), str(second)], "7")  # the second output has no record
    assert (loaded.watermark, loaded.retry, loaded.run_id) == (600.0, ("/in/x.jpg",), "r2")
    assert incremental.unpack(loaded.recent).tolist() == [1, 2]
    assert incremental.load([str(first)], "8") == []  # another model version starts from nothing
