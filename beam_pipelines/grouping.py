"""Exact copies and near-copies, and the split each photo goes to: preprocessing's grouping, on small facts only.

Records are written as they are decoded, each into the split of its own content id (`split_for_group`), which is
where nearly every photo stays: a photo with no copy and no near-copy is its own group. This module finds the few
that must change, from `Fact`s (content id, perceptual hash, path, where its record was written), never the records:

  GroupExactCopies   facts by content id: one record per content is kept (an earlier version's, else the smallest
                     path); the others are `drop`ped as duplicates
  LinkNearCopies     perceptual hashes within --near_duplicate_bits bits, found in bits+1 hash bands (pigeonhole)
  PropagateGroups    --link_rounds rounds of min-label propagation over the links, carrying the splits of earlier
                     versions' photos, which never move
  DecideSplits       a linked photo goes to its group's split: the one split its earlier-version neighbours are in
                     (a new near-copy of a test photo goes to test), or the hash of the group's label when it has
                     none; a new photo linked to photos in two different splits is rejected
                     (near_copy_of_several_splits)

Each stage is a composite PTransform with its own TestPipeline test. Outputs are `Change`s: (batch, what to do with
one record of that batch), few, and counts.
"""

import hashlib
import itertools
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from trainer import features

ACROSS_SPLITS = "near_copy_of_several_splits"  # a rejection reason


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


def link_bucket(band_and_members, bits: int):
    """Yields (a, (b, a's fixed split)) and (b, (a, b's fixed split)) for every pair in one hash band within `bits`
    Hamming bits. Members are (content id, (perceptual hash, fixed split or "")).

    A pair agreeing on several bands is emitted only from the first of them, so no Distinct is needed.
    """
    (band, _), members = band_and_members
    unique = sorted(dict(members).items())  # exact copies share a content id: one entry each
    if len(unique) < 2:
        return
    ids = [content_id for content_id, _ in unique]
    fixed = [fixed_split for _, (_, fixed_split) in unique]
    phashes = [phash for _, (phash, _) in unique]
    hashes = np.array(phashes, dtype=np.uint64)
    for i in range(len(unique) - 1):
        distances = np.bitwise_count(hashes[i + 1:] ^ hashes[i])
        for offset in np.flatnonzero(distances <= bits):
            j = i + 1 + int(offset)
            if any(a == b for (k, a), (_, b) in zip(hash_bands(phashes[i], bits), hash_bands(phashes[j], bits),
                                                     strict=True) if k < band):
                continue
            yield ids[i], (ids[j], fixed[i])
            yield ids[j], (ids[i], fixed[j])


# ---- exact copies -------------------------------------------------------------------------------------------------

def keep_one_copy(content_and_facts):
    """Per content id: ("node", Fact kept) once, and ("drop", Fact) for every other copy."""
    _, facts = content_and_facts
    facts = list(facts)
    kept = min(facts, key=lambda fact: (not fact.fixed, fact.path))
    yield "node", kept
    for fact in facts:
        if fact is not kept:
            yield "drop", fact


class GroupExactCopies(beam.PTransform):
    """Facts -> {"nodes": one Fact per content id, "changes": drops of the other copies}."""

    def expand(self, facts):
        outcomes = (facts
                    | "KeyByContent" >> beam.Map(lambda fact: (fact.content_id, fact))
                    | "GroupByContent" >> beam.GroupByKey()
                    | "KeepOneCopy" >> beam.FlatMap(keep_one_copy))
        nodes = outcomes | "Nodes" >> beam.FlatMap(lambda o: [o[1]] if o[0] == "node" else [])
        changes = outcomes | "Drops" >> beam.FlatMap(
            lambda o: [Change(o[1].batch, o[1], "drop", reason="duplicate")] if o[0] == "drop" else [])
        return {"nodes": nodes, "changes": changes}


# ---- near copies --------------------------------------------------------------------------------------------------

def neighbour_list(node, links):
    """(node, [(neighbour, node's fixed split)]) -> (node, (node's fixed split or "", sorted neighbours))."""
    links = list(links)
    return node, (links[0][1], sorted({neighbour for neighbour, _ in links}))


class LinkNearCopies(beam.PTransform):
    """Nodes -> (content id, (its fixed split or "", [neighbour content ids])) for every node with a near-copy."""

    def __init__(self, bits: int):
        super().__init__()
        self._bits = bits

    def expand(self, nodes):
        bits = self._bits
        return (nodes
                | "BandHashes" >> beam.FlatMap(
                    lambda node: [(band, (node.content_id, (node.phash, node.split if node.fixed else "")))
                                  for band in hash_bands(node.phash, bits)])
                | "GroupByHashBand" >> beam.GroupByKey()
                | "LinkPairs" >> beam.FlatMap(link_bucket, bits)
                | "CollectNeighbours" >> beam.GroupByKey()
                | "ListNeighbours" >> beam.MapTuple(neighbour_list))


def propagate(node_and_joined):
    """One round: a node sends its (label, splits of earlier-version photos reached) to itself and its neighbours.
    Splits travel as one comma-separated string ("" for none): a fixed-shape value, whatever the count."""
    node, joined = node_and_joined
    [(label, splits)] = list(joined["state"])
    yield node, (label, splits)
    for _, neighbours in joined["neighbours"]:
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
    """Linked nodes (LinkNearCopies' output) -> (content id, (group label, splits of earlier-version photos in
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
    """(content id, {"node": [Fact], "group": [(label, splits, converged)]}) -> Changes for that photo, plus the
    ("linked" | "unconverged") count keys."""
    _, joined = item
    if not joined["group"] or not joined["node"]:
        return
    [node], [(label, splits, converged)] = joined["node"], joined["group"]
    splits = splits.split(",") if splits else []
    yield "linked"
    if not converged:
        yield "unconverged"
    if node.fixed:
        return  # photos of earlier versions never move
    if len(splits) > 1:
        yield Change(node.batch, node, "reject", reason=ACROSS_SPLITS)
        return
    split = splits[0] if splits else split_for_group(label, ratios)
    if split != node.split:
        yield Change(node.batch, node, "move", split=split)


class DecideSplits(beam.PTransform):
    """(nodes, group states) -> {"changes": moves and rejections, "counts": count keys}."""

    def __init__(self, ratios):
        super().__init__()
        self._ratios = tuple(ratios)

    def expand(self, inputs):
        nodes, groups = inputs
        ratios = self._ratios
        decided = ({"node": nodes | "KeyNodes" >> beam.Map(lambda n: (n.content_id, n)), "group": groups}
                   | "JoinGroups" >> beam.CoGroupByKey()
                   | "Decide" >> beam.FlatMap(decide, ratios))
        return {"changes": decided | "Changes" >> beam.Filter(lambda d: isinstance(d, Change)),
                "counts": decided | "Counts" >> beam.Filter(lambda d: isinstance(d, str))}
