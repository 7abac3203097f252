"""spill.py: facts partitioned by key into one file, each partition read back alone."""

import pytest

from beam_pipelines import spill


def test_each_partition_reads_back_exactly_its_own_items(tmp_path):
    items = [(f"/photos/{i:05d}.jpg".encode(), i) for i in range(2000)]
    path = str(tmp_path / "facts.spill")
    pairs = spill.spill(path, items, key=lambda item: item[0])
    partitions = [partition for partition, _ in pairs]
    assert {name for _, name in pairs} == {path}
    assert partitions == sorted(set(partitions)) and len(partitions) == spill.PARTITIONS  # 2,000 keys fill all 64
    read_back = {partition: spill.read(path, partition) for partition in partitions}
    assert sorted(item for part in read_back.values() for item in part) == items
    for partition, part in read_back.items():
        assert part and all(spill.partition_of(key) == partition for key, _ in part)


def test_a_partition_a_file_does_not_hold_is_empty_and_read_all_chains_files(tmp_path):
    first, second = str(tmp_path / "a.spill"), str(tmp_path / "b.spill")
    key = b"only-key"
    held = spill.spill(first, [(key, "from a")], key=lambda item: item[0])
    spill.spill(second, [(key, "from b")], key=lambda item: item[0])
    (partition, _), = held
    assert spill.read(first, (partition + 1) % spill.PARTITIONS) == []
    assert list(spill.read_all([first, second], partition)) == [(key, "from a"), (key, "from b")]


def test_a_file_that_is_not_a_spill_file_is_refused(tmp_path):
    other = tmp_path / "other.spill"
    other.write_bytes(b"PK\x03\x04 a zip, not ours" + bytes(32))
    with pytest.raises(ValueError, match="not a spill file"):
        spill.read(str(other), 0)
