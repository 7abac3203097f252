"""Exact copies and near-copies, and the split each photo goes to: preprocessing's grouping, on small facts only.

Records are written as they are decoded, each into the split of its own content id (`split_for_group`), which is
where nearly every photo stays: a photo with no copy and no near-copy is its own group. This module finds the few
that must change, from `Fact`s (content id, perceptual hash, path, where its record was written), never the records:

  band_entries     each photo's 64-bit perceptual hash cut into --near_duplicate_bits + 1 bands: two hashes at most
                   that many bits apart agree on at least one band (pigeonhole). The workers that make the facts spill
                   these entries to disk, partitioned by band (spill.py)
  GroupBands       per spill partition: the photos sharing a band. Exact copies (same content id) meet in their first
                   band: one record per content is kept (an earlier version's, else the smallest path) and the others
                   are dropped; photos within the bit threshold are linked
  PropagateGroups  --link_rounds rounds of min-label propagation over the links only, carrying the splits of earlier
                   versions' photos, which never move
  DecideSplits     a linked photo goes to its group's split: the one split its earlier-version neighbours are in (a new
                   near-copy of a test photo goes to test), or the hash of the group's label when it has none; a new
                   photo linked to photos in two different splits is rejected (near_copy_of_several_splits)

What crosses the runner from here on is one element per (spill partition) and per link: the facts of a photo with no
near-copy never become an element. Outputs are `Change`s (batch, what to do with one record of it), few, and counts.
"""

import hashlib
import itertools
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from beam_pipelines import spill
from trainer import features

ACROSS_SPLITS = "near_copy_of_several_splits"  # a rejection reason
_SMALL_BUCKET = 16


class Fact(NamedTuple):
    """What the grouping knows of one photo. `batch`/`split`/`index` say where its record is: the shard of that split
    in that batch, at that position. `fixed`: the photo is in an earlier version, its split never changes."""

    content_id: str
    phash: int
    path: str
    label: int
    batch: str
    split: str
    index: int
    fixed: bool = False
    size: int = 0
    version: int = 0


class Change(NamedTuple):
    """One record to change: `action` is "drop" (a duplicate, or the photo is gone), "move" (to `split`), or
    "reject" (with `reason`)."""

    batch: str
    fact: Fact
    action: str
    split: str = ""
    reason: str = ""


def split_for_group(group: str, ratios) -> str:
    """Deterministic split of a near-duplicate group from a hash of its label (not Python's salted hash())."""
    position = int.from_bytes(hashlib.sha256(group.encode("ascii")).digest()[:8], "big") / 2.0 ** 64
    cumulative = 0.0
    for split, ratio in zip(features.SPLITS, ratios, strict=True):
        cumulative += ratio
        if position < cumulative and ratio > 0:
            return split
    return next(s for s, r in zip(reversed(features.SPLITS), reversed(ratios), strict=True) if r > 0)


def hash_bands(phash: int, bits: int) -> list[tuple[int, int]]:
    """(band index, band value) for the bits+1 bands of a 64-bit hash. Two hashes at most `bits` apart
    agree on at least one band (pigeonhole), so comparing within bands finds every such pair."""
    count = bits + 1
    edges = [round(i * 64 / count) for i in range(count + 1)]
    return [(i, (phash >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


def band_entries(fact: Fact, bits: int) -> list[tuple[tuple[int, int], Fact]]:
    return [(band, fact) for band in hash_bands(fact.phash, bits)]


def band_key(entry) -> bytes:
    """The spill partition key of a band entry."""
    (band, value), _ = entry
    return f"{band}:{value}".encode()


def spill_bands(path: str, facts, bits: int) -> list[tuple[int, str]]:
    """Writes the facts' band entries to a spill file; returns the (partition, path) pairs for GroupBands."""
    return spill.spill(path, (entry for fact in facts for entry in band_entries(fact, bits)), band_key)


def kept_copy(facts) -> Fact:
    """Of copies with the same content: an earlier version's photo, else the one with the smallest path."""
    return min(facts, key=lambda fact: (not fact.fixed, fact.path))


def link_bucket(band, members, bits: int):
    """For one band bucket: ("drop", Fact) for each extra copy of a content (in the first band only, where every copy
    of a content meets: copies have the same hash), and ("link", (a, (b, a's fixed split or "", a's kept Fact))) both
    ways for every pair of contents within `bits` bits. A pair agreeing on several bands is linked only from the first
    of them, so no Distinct is needed."""
    index, _ = band
    by_content = {}
    for fact in members:
        by_content.setdefault(fact.content_id, []).append(fact)
    kept = {content_id: kept_copy(facts) for content_id, facts in by_content.items()}
    if index == 0:
        for content_id, facts in by_content.items():
            for fact in facts:
                if fact is not kept[content_id]:
                    yield "drop", fact
    if len(kept) < 2:
        return
    ids = sorted(kept)
    phashes = [kept[content_id].phash for content_id in ids]
    hashes = np.array(phashes, dtype=np.uint64) if len(ids) > _SMALL_BUCKET else None
    bands = {}
    for i in range(len(ids) - 1):
        if hashes is None:  # most buckets hold two or three photos: plain ints beat numpy's per-call cost
            near = [j for j in range(i + 1, len(ids)) if (phashes[i] ^ phashes[j]).bit_count() <= bits]
        else:
            near = [i + 1 + int(k) for k in np.flatnonzero(np.bitwise_count(hashes[i + 1:] ^ hashes[i]) <= bits)]
        for j in near:
            for member in (i, j):
                if member not in bands:
                    bands[member] = hash_bands(phashes[member], bits)
            if any(a == b for (k, a), (_, b) in zip(bands[i], bands[j], strict=True) if k < index):
                continue  # they agree on an earlier band: linked there
            for a, b in ((ids[i], ids[j]), (ids[j], ids[i])):
                fact = kept[a]
                yield "link", (a, (b, fact.split if fact.fixed else "", fact))


class GroupBandsFn(beam.DoFn):
    """(partition, [spill files]) -> link_bucket's outputs for every band bucket of that partition."""

    def __init__(self, bits: int):
        self._bits = bits

    def process(self, partition_and_paths):
        partition, paths = partition_and_paths
        buckets = {}
        for band, fact in spill.read_all(sorted(set(paths)), partition):
            buckets.setdefault(band, []).append(fact)
        for band, members in buckets.items():
            if len(members) > 1:
                yield from link_bucket(band, members, self._bits)


class GroupBands(beam.PTransform):
    """(partition, spill file) pairs -> {"drops": Changes for extra copies, "neighbours": (content id, (its fixed
    split or "", [neighbour content ids], its kept Fact)) for every photo with a near-copy}."""

    def __init__(self, bits: int):
        super().__init__()
        self._bits = bits

    def expand(self, spilled):
        outcomes = (spilled
                    | "GroupSpillsByPartition" >> beam.GroupByKey()
                    | "GroupBandsOnDisk" >> beam.ParDo(GroupBandsFn(self._bits)))
        drops = outcomes | "Drops" >> beam.FlatMap(
            lambda o: [Change(o[1].batch, o[1], "drop", reason="duplicate")] if o[0] == "drop" else [])
        neighbours = (outcomes
                      | "Links" >> beam.FlatMap(lambda o: [o[1]] if o[0] == "link" else [])
                      | "CollectNeighbours" >> beam.GroupByKey()
                      | "ListNeighbours" >> beam.MapTuple(neighbour_list))
        return {"drops": drops, "neighbours": neighbours}


def neighbour_list(node, links):
    """(node, [(neighbour, node's fixed split, node's Fact)]) -> (node, (fixed split, sorted neighbours, Fact))."""
    links = list(links)
    return node, (links[0][1], sorted({neighbour for neighbour, _, _ in links}), links[0][2])


def propagate(node_and_joined):
    """One round: a node sends its (label, splits of earlier-version photos reached) to itself and its neighbours.
    Splits travel as one comma-separated string ("" for none): a fixed-shape value, whatever the count."""
    node, joined = node_and_joined
    [(label, splits)] = list(joined["state"])
    yield node, (label, splits)
    for _, neighbours, _ in joined["neighbours"]:
        for neighbour in neighbours:
            yield neighbour, (label, splits)


def settle(node_and_states):
    """(node, (smallest label heard, every split heard, whether anything changed in this round))."""
    node, states = node_and_states
    states = list(states)
    label = min(state[0] for state in states)
    splits = ",".join(sorted({split for state in states for split in state[1].split(",") if split}))
    changed = any(state[0] != label or state[1] != splits for state in states)
    return node, (label, splits, changed)


class PropagateGroups(beam.PTransform):
    """Linked nodes (GroupBands' neighbours) -> (content id, (group label, splits of earlier-version photos in
    reach, converged))."""

    def __init__(self, rounds: int):
        super().__init__()
        self._rounds = rounds

    def expand(self, neighbours):
        states = neighbours | "StartStates" >> beam.MapTuple(lambda node, links: (node, (node, links[0])))
        settled = None
        for round_index in range(1, self._rounds + 1):
            settled = (
                {"state": states, "neighbours": neighbours}
                | f"JoinStates[{round_index}]" >> beam.CoGroupByKey()
                | f"SendStates[{round_index}]" >> beam.FlatMap(propagate)
                | f"GatherStates[{round_index}]" >> beam.GroupByKey()
                | f"Settle[{round_index}]" >> beam.Map(settle))
            states = settled | f"DropFlag[{round_index}]" >> beam.MapTuple(lambda n, s: (n, (s[0], s[1])))
        return settled | "Converged" >> beam.MapTuple(lambda node, s: (node, (s[0], s[1], not s[2])))


def decide(item, ratios):
    """(content id, {"node": [(fixed, neighbours, Fact)], "group": [(label, splits, converged)]}) -> Changes for that
    photo, plus the ("linked" | "unconverged") count keys."""
    _, joined = item
    if not joined["group"] or not joined["node"]:
        return
    [(_, _, node)], [(label, splits, converged)] = joined["node"], joined["group"]
    splits = splits.split(",") if splits else []
    yield "linked"
    if not converged:
        yield "unconverged"
    if node.fixed:  # photos of earlier versions never move
        return
    if len(splits) > 1:
        yield Change(node.batch, node, "reject", reason=ACROSS_SPLITS)
        return
    split = splits[0] if splits else split_for_group(label, ratios)
    if split != node.split:
        yield Change(node.batch, node, "move", split=split)


class DecideSplits(beam.PTransform):
    """(neighbours, group states), both for linked photos only -> {"changes": moves and rejections, "counts": count
    keys}."""

    def __init__(self, ratios):
        super().__init__()
        self._ratios = tuple(ratios)

    def expand(self, inputs):
        neighbours, groups = inputs
        ratios = self._ratios
        decided = ({"node": neighbours, "group": groups}
                   | "JoinGroups" >> beam.CoGroupByKey()
                   | "Decide" >> beam.FlatMap(decide, ratios))
        return {"changes": decided | "Changes" >> beam.Filter(lambda d: isinstance(d, Change)),
                "counts": decided | "Counts" >> beam.Filter(lambda d: isinstance(d, str))}
