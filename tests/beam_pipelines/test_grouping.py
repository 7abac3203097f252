"""grouping.py: the hash bands, and GroupBands, PropagateGroups and DecideSplits each alone in a TestPipeline on
hand-made facts (the shape records.DecodeAndWriteFn spills: grouping.Fact per record, band entries per spill file)."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import grouping
from trainer import features

RATIOS = (0.8, 0.1, 0.1)


def _pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner="DirectRunner")


def _fact(content_id, phash, *, path=None, batch="b1", split="train", index=0, fixed=False):
    return grouping.Fact(content_id, phash, path or f"/in/{content_id}.jpg", 0, batch, split, index, fixed)


def test_hash_bands_find_every_pair_within_the_threshold():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=int(rng.integers(0, 5)), replace=False)
        b = a ^ sum(1 << int(bit) for bit in flips)
        assert any(x == y for x, y in zip(grouping.hash_bands(a, 4), grouping.hash_bands(b, 4), strict=True))
    # the bands cover the 64 bits exactly once: the hash is rebuilt from them
    bands = grouping.hash_bands(0x0123456789ABCDEF, 4)
    edges = [round(i * 64 / 5) for i in range(6)]
    assert sum(value << edges[index] for index, value in bands) == 0x0123456789ABCDEF
    assert len(grouping.hash_bands(0, 0)) == 1 and len(grouping.hash_bands(0, 8)) == 9


def test_link_bucket_links_pairs_within_the_threshold_both_ways():
    members = [_fact("x", 0b1111), _fact("y", 0b0000, split="test", fixed=True), _fact("z", 0b11111)]
    links = sorted((a, b, fixed) for kind, (a, (b, fixed, _)) in grouping.link_bucket((0, 0), members, 4)
                   if kind == "link")
    assert links == [("x", "y", ""), ("x", "z", ""), ("y", "x", "test"), ("z", "x", "")]  # y, z are 5 bits apart


def test_split_for_group_follows_ratios_and_never_changes_between_releases():
    groups = [f"{i:064x}" for i in range(3000)]
    splits = [grouping.split_for_group(g, RATIOS) for g in groups]
    assert 0.75 < splits.count("train") / len(splits) < 0.85
    assert {grouping.split_for_group(g, (0.0, 0.0, 1.0)) for g in groups[:50]} == {"test"}
    assert {grouping.split_for_group(g, (0.5, 0.5, 0.0)) for g in groups[:200]} == {"train", "validation"}
    # sha256 of the label, not Python's salted hash(): a photo's split is the same in every process and release
    assert [grouping.split_for_group(g, RATIOS) for g in groups[:12]] == [
        "train", "train", "train", "train", "train", "test", "train", "train", "validation", "train", "train", "train"]


def test_group_bands_drops_extra_copies_and_links_near_copies_within_the_threshold(tmp_path):
    a, near, far, old = 0, 0b1111, 0b11111 << 20, 0xFFFF0000FFFF0000
    facts = {
        "a": _fact("a", a, path="/in/a.jpg", batch="b1"),
        "a_copy": _fact("a", a, path="/in/b-copy.jpg", batch="b2", index=3),  # larger path: dropped
        "near": _fact("n", near, batch="b1", index=1),  # 4 bits from a: linked
        "far": _fact("f", far, batch="b2", index=1),  # 5 bits from a (same bucket in 4 bands): not linked
        "old": _fact("o", old, path="/z/old.jpg", batch="v1", split="test", fixed=True),
        "old_copy": _fact("o", old, path="/a/new.jpg", batch="b2", index=2),  # smaller path, but old is earlier
        "old_near": _fact("p", old ^ 0b101, batch="b2", index=4),
    }
    first, second = ([f for k, f in facts.items() if f.batch == batch] for batch in ("b1", "b2"))
    spilled = (grouping.spill_bands(str(tmp_path / "b1.spill"), first, 4)
               + grouping.spill_bands(str(tmp_path / "b2.spill"), second, 4)
               + grouping.spill_bands(str(tmp_path / "v1.spill"), [facts["old"]], 4))
    with _pipeline() as pipeline:
        grouped = pipeline | beam.Create(spilled) | grouping.GroupBands(4)
        assert_that(grouped["drops"], equal_to([
            grouping.Change("b2", facts["a_copy"], "drop", reason="duplicate"),
            grouping.Change("b2", facts["old_copy"], "drop", reason="duplicate")]), label="CheckDrops")
        assert_that(grouped["neighbours"], equal_to([
            ("a", ("", ["n"], facts["a"])), ("n", ("", ["a"], facts["near"])),
            ("o", ("test", ["p"], facts["old"])), ("p", ("", ["o"], facts["old_near"]))]), label="CheckNeighbours")

        # --near_duplicate_bits 0: identical hashes only, and copies still dropped
        exact = [_fact("a", 7, path="/in/1.jpg"), _fact("a", 7, path="/in/2.jpg", index=1), _fact("b", 6, index=2)]
        only_copies = (pipeline | "ZeroBitSpills" >> beam.Create(
            grouping.spill_bands(str(tmp_path / "zero.spill"), exact, 0)) | "ZeroBits" >> grouping.GroupBands(0))
        assert_that(only_copies["drops"] | beam.Map(lambda change: change.fact.path), equal_to(["/in/2.jpg"]),
                    label="CheckZeroBitDrops")
        assert_that(only_copies["neighbours"], equal_to([]), label="CheckZeroBitLinks")


def _chain(names, fixed_splits):
    """GroupBands' neighbours for photos linked in a chain, in that order."""
    out = []
    for position, name in enumerate(names):
        linked = [names[i] for i in (position - 1, position + 1) if 0 <= i < len(names)]
        split = fixed_splits.get(name, "")
        out.append((name, (split, linked, _fact(name, position, split=split or "train", fixed=bool(split)))))
    return out


def test_propagate_groups_labels_a_chain_by_its_smallest_id_within_link_rounds():
    # two rounds carry a label and a split two links: the far end of a six-photo chain is reported unconverged
    two_rounds = {"a": ("a", "", True), "b": ("a", "", False), "c": ("a", "", False), "d": ("b", "test", False),
                  "e": ("c", "test", False), "f": ("d", "test", False)}
    # six rounds settle it: one group, labelled by its smallest id, carrying the earlier version's split
    six_rounds = {name: ("a", "test", True) for name in "abcdef"}
    # a new photo between two earlier ones: both their splits reach the whole group
    star = [("hub", ("", ["t", "v"], _fact("hub", 0))),
            ("t", ("train", ["hub"], _fact("t", 1, fixed=True))),
            ("v", ("validation", ["hub"], _fact("v", 2, split="validation", fixed=True)))]
    with _pipeline() as pipeline:
        chain = pipeline | "Chain" >> beam.Create(_chain(list("abcdef"), {"f": "test"}))
        assert_that(chain | "TwoRounds" >> grouping.PropagateGroups(2), equal_to(sorted(two_rounds.items())),
                    label="CheckTwoRounds")
        assert_that(chain | "SixRounds" >> grouping.PropagateGroups(6), equal_to(sorted(six_rounds.items())),
                    label="CheckSixRounds")
        assert_that(pipeline | "Star" >> beam.Create(star) | "StarRounds" >> grouping.PropagateGroups(3),
                    equal_to([(name, ("hub", "train,validation", True)) for name in ("hub", "t", "v")]),
                    label="CheckStar")


def test_decide_splits_moves_rejects_or_keeps_each_linked_photo():
    free_label = "g" * 64
    free_split = grouping.split_for_group(free_label, RATIOS)
    elsewhere = next(split for split in features.SPLITS if split != free_split)
    nodes = {
        "fixed": _fact("fixed", 0, split="test", fixed=True),
        "follows": _fact("follows", 1, split="train"),
        "stays": _fact("stays", 2, split="test"),
        "both": _fact("both", 3, split="train"),
        "free": _fact("free", 4, split=elsewhere),
        "orphan": _fact("orphan", 5),
    }
    neighbours = [(name, ("test" if fact.fixed else "", ["x"], fact)) for name, fact in nodes.items()]
    groups = [("fixed", ("fixed", "test", True)), ("follows", ("fixed", "test", True)),
              ("stays", ("fixed", "test", True)), ("both", ("b", "test,train", True)),
              ("free", (free_label, "", False)), ("ghost", ("ghost", "", True))]
    with _pipeline() as pipeline:
        decided = ((pipeline | "Neighbours" >> beam.Create(neighbours), pipeline | "Groups" >> beam.Create(groups))
                   | grouping.DecideSplits(RATIOS))
        assert_that(decided["changes"], equal_to([
            grouping.Change("b1", nodes["follows"], "move", split="test"),
            grouping.Change("b1", nodes["both"], "reject", reason=grouping.ACROSS_SPLITS),
            grouping.Change("b1", nodes["free"], "move", split=free_split)]), label="CheckChanges")
        assert_that(decided["counts"], equal_to(["linked"] * 5 + ["unconverged"]), label="CheckCounts")


def test_a_few_hundred_pairs_of_near_copies_land_together_in_splits_by_ratio(tmp_path):
    """The three stages chained as preprocess.build chains them, on 300 pairs of near-copies written as records.py
    writes them (each into the split of its own content id) by two workers."""
    ratios = (0.6, 0.2, 0.2)
    rng = np.random.default_rng(7)
    facts = []
    for pair in range(300):
        phash = int(rng.integers(0, 2**63)) * 2 + 1
        for member, flips in enumerate((0, 1 << int(rng.integers(0, 64)) | 1 << int(rng.integers(0, 64)))):
            content_id = f"{pair:04d}{member}".ljust(64, "0")
            facts.append(_fact(content_id, phash ^ flips, batch=f"b{member}", index=pair,
                               split=grouping.split_for_group(content_id, ratios)))
    spilled = [pair for member in (0, 1) for pair in grouping.spill_bands(
        str(tmp_path / f"b{member}.spill"), [fact for fact in facts if fact.batch == f"b{member}"], 4)]
    with _pipeline() as pipeline:
        grouped = pipeline | beam.Create(spilled) | grouping.GroupBands(4)
        groups = grouped["neighbours"] | grouping.PropagateGroups(4)
        decided = (grouped["neighbours"], groups) | grouping.DecideSplits(ratios)
        final = decided["changes"] | beam.Map(lambda change: (change.fact.content_id, change.action, change.split))

        def check(moves):
            assert all(action == "move" for _, action, _ in moves)
            split_of = {fact.content_id: fact.split for fact in facts} | {cid: split for cid, _, split in moves}
            by_pair = {}
            for content_id, split in split_of.items():
                by_pair.setdefault(content_id[:4], set()).add(split)
            # every pair in one split: the split of its group's label, its smaller content id
            assert all(len(splits) == 1 for splits in by_pair.values())
            assert all(split_of[f"{pair}0".ljust(64, "0")] == grouping.split_for_group(f"{pair}0".ljust(64, "0"),
                                                                                     ratios) for pair in by_pair)
            shares = [sum(splits == {split} for splits in by_pair.values()) / 300 for split in features.SPLITS]
            assert shares == pytest.approx(ratios, abs=0.07)
            assert 0 < len(moves) < 300  # only the second members whose own split differed moved

        assert_that(final, check, label="CheckMoves")
        assert_that(grouped["drops"], equal_to([]), label="CheckNoDrops")
        assert_that(decided["counts"] | beam.combiners.Count.PerElement(), equal_to([("linked", 600)]),
                    label="CheckCounts")


def test_a_new_near_copy_of_photos_in_two_splits_is_left_out_with_its_reason(tmp_path):
    """A new photo linked to a train photo and a test photo of an earlier version, and an exact copy of the train
    photo: the three stages chained."""
    facts = [_fact("a" * 64, 0b0000, split="train", fixed=True),
             _fact("b" * 64, 0b1111 << 40, split="test", fixed=True),
             _fact("c" * 64, 0b11 | 0b11 << 40, split="validation", batch="b2"),
             _fact("a" * 64, 0b0000, split="train", batch="b3", path="/copy-of-a.jpg")]
    spilled = grouping.spill_bands(str(tmp_path / "bands.spill"), facts, 4)
    with _pipeline() as pipeline:
        grouped = pipeline | beam.Create(spilled) | grouping.GroupBands(4)
        groups = grouped["neighbours"] | grouping.PropagateGroups(4)
        decided = (grouped["neighbours"], groups) | grouping.DecideSplits(RATIOS)
        assert_that(decided["changes"] | beam.Map(lambda c: (c.batch, c.action, c.reason, c.fact.content_id[0])),
                    equal_to([("b2", "reject", grouping.ACROSS_SPLITS, "c")]), label="CheckChanges")
        assert_that(grouped["drops"] | beam.Map(lambda c: (c.batch, c.fact.path)),
                    equal_to([("b3", "/copy-of-a.jpg")]), label="CheckDrops")
