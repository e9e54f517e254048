"""Stage 10: near-duplicate images (perceptual hashes within a Hamming distance) are one image,
and images within the distance of an evaluation image are removed.

    (key, shard, hash) of every sample that survived exact dedup, and of completed shards
      -> against the evaluation set  (a banded index of its hashes, a side input)
      -> identical hashes            (GroupByKey on the whole hash: one representative each)
      -> bands                       (distance + 1 bands per representative: pigeonhole)
      -> close pairs per band        (verified by full distance; hot bands sub-split)
      -> groups                      (a union-find over the pairs, one survivor per group)
      -> losers                      ((shard, failure record) for every removed new sample)

Never all pairs: two hashes within `distance` bits agree exactly on at least one of
`distance + 1` bands, so only hashes that share a band value are compared. A band value that
very many hashes share (blank pictures, placeholders) is a hot bucket; it is sub-split on the
bits its members do not all share, again into `distance + 1` parts (`close_pairs`), so a
bucket's work stays near-linear whatever its size. Identical hashes never reach a bucket more
than once: they are collapsed first.

The survivor of a group is its smallest key, whatever the runner and the worker count: union
by key is associative and commutative. A resumed run's groups hold the samples of completed
shards too, written or dropped after grouping (their hashes are in the failure records), so it
keeps the same survivors; a sample already written is never removed.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from openwit.pipeline.core.records import Reason, Stage, failure
from openwit.pipeline.images.config import DedupConfig
from openwit.pipeline.images.image_hash import band_edges, bands, distances, hamming, to_words

PAIR_BLOCK = 1024  # rows compared at once in a bucket: a block x bucket distance matrix


# ------------------------------------------------------------------ pairs within a bucket


def _block_pairs(words: np.ndarray, distance: int):
    """Every (i, j), i < j, within `distance`: blocks of rows against the rows after them."""
    for start in range(0, len(words), PAIR_BLOCK):
        block = distances(words[start:start + PAIR_BLOCK], words[start:])
        rows, columns = np.nonzero(block <= distance)
        rows = rows + start
        columns = columns + start
        later = columns > rows
        if later.any():
            yield rows[later], columns[later]


def _bit_columns(words: np.ndarray, bits: int) -> np.ndarray:
    """(n, bits) array of 0/1, the first column the top bit."""
    columns = np.empty((len(words), bits), dtype=np.uint8)
    for bit in range(bits):
        position = bits - 1 - bit
        word = words.shape[1] - 1 - position // 64
        columns[:, bit] = (words[:, word] >> np.uint64(position % 64)) & np.uint64(1)
    return columns


def close_pairs(words: np.ndarray, bits: int, distance: int, hot_bucket: int,
                connect_only: bool = False):
    """(i, j) index arrays of the hashes (rows of `words`) within `distance` of each other.

    A bucket of at most `hot_bucket` hashes is compared block by block. A bigger one is split
    on the bits where its hashes differ, into `distance + 1` parts; two hashes within the
    distance agree exactly on one part, so each part's value groups are searched in turn (a
    pair may be yielded more than once). When `connect_only`, a bucket whose hashes differ in
    at most `distance` bits altogether (every pair is close) yields a star, not every pair.
    """
    n = len(words)
    if n < 2:
        return
    if n <= hot_bucket:
        yield from _block_pairs(words, distance)
        return
    columns = _bit_columns(words, bits)
    varying = np.nonzero(columns.min(axis=0) != columns.max(axis=0))[0]
    if len(varying) <= distance:
        if connect_only:
            yield np.zeros(n - 1, dtype=np.int64), np.arange(1, n)
        else:
            yield from _block_pairs(words, distance)
        return
    parts = []
    for start, end in band_edges(len(varying), distance + 1):
        values = np.packbits(columns[:, varying[start:end]], axis=1)
        _, group_of = np.unique(values, axis=0, return_inverse=True)
        order = np.argsort(group_of.ravel(), kind="stable")
        bounds = np.flatnonzero(np.diff(group_of.ravel()[order])) + 1
        parts.append(np.split(order, bounds))
    # Too few bits vary for the parts to separate much: comparing directly is cheaper.
    if sum(len(g) ** 2 for groups in parts for g in groups) >= n * n // 2:
        yield from _block_pairs(words, distance)
        return
    for groups in parts:
        for members in groups:
            if len(members) < 2:
                continue
            for rows, cols in close_pairs(words[members], bits, distance, hot_bucket,
                                          connect_only):
                yield members[rows], members[cols]


def near_pairs(hashes: list[str], bits: int, distance: int, hot_bucket: int) -> set[tuple[int, int]]:
    """Every pair (i < j) of `hashes` within `distance`, by bands: what the pipeline finds,
    in one process (for tests and the benchmark)."""
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, value in enumerate(hashes):
        for band in bands(value, bits, distance):
            buckets.setdefault(band, []).append(index)
    found = set()
    for members in buckets.values():
        members = np.asarray(members)
        for rows, cols in close_pairs(to_words([hashes[m] for m in members], bits), bits,
                                      distance, hot_bucket):
            for i, j in zip(members[rows].tolist(), members[cols].tolist()):
                found.add((min(i, j), max(i, j)))
    return found


# ------------------------------------------------------------------------- the groups


class UnionFind:
    """Nodes are (key, hash) pairs; a group's root is its smallest node, so the result does
    not depend on the order of unions."""

    def __init__(self):
        self.parent: dict[tuple, tuple] = {}

    def find(self, node: tuple) -> tuple:
        root = self.parent.setdefault(node, node)
        while self.parent[root] != root:  # a loop, not recursion: chains can be long
            root = self.parent[root]
        while node != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: tuple, b: tuple) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


class _Groups(beam.CombineFn):
    """Close pairs -> {key: the node that survives its group} for every key not a survivor.

    One accumulator holds the nodes that have a near-duplicate (not every sample): the groups
    are resolved on one worker (README: "Near-duplicates")."""

    def create_accumulator(self):
        return UnionFind()

    def add_input(self, groups, pair):
        groups.union(*pair)
        return groups

    def merge_accumulators(self, accumulators):
        merged = UnionFind()
        for groups in accumulators:
            for node, parent in groups.parent.items():
                merged.union(node, parent)
        return merged

    def extract_output(self, groups):
        roots = {}
        for node in list(groups.parent):
            root = groups.find(node)
            if root != node:
                roots[node[0]] = root
        return roots


# ------------------------------------------------------------------------- the stage


def _representatives(hash_and_members):
    """(hash, [(node, shard, is_new)]) -> the smallest node on "representative", and
    (node, shard, is_new, representative) for each member: identical hashes are one node in
    the search."""
    _, members = hash_and_members
    # Two passes over the grouped values (Beam's are re-iterable), never a sorted copy: a
    # placeholder picture may be shared by millions of URLs.
    representative = min(node for node, _, _ in members)
    yield beam.pvalue.TaggedOutput("representative", representative)
    for node, shard, is_new in members:
        yield node, shard, is_new, representative


def _in_bands(bits: int, distance: int):
    def emit(node):
        for band in bands(node[1], bits, distance):
            yield band, node
    return emit


def _pairs_in_band(bits: int, distance: int, hot_bucket: int):
    def pairs(band_and_nodes):
        _, nodes = band_and_nodes
        nodes = sorted(set(nodes))
        if len(nodes) < 2:
            return
        words = to_words([node[1] for node in nodes], bits)
        groups = UnionFind()
        for rows, cols in close_pairs(words, bits, distance, hot_bucket, connect_only=True):
            for i, j in zip(rows.tolist(), cols.tolist()):
                groups.union(nodes[i], nodes[j])
        # A forest, not every pair: each node to its group's smallest node.
        for node in groups.parent:
            root = groups.find(node)
            if root != node:
                yield root, node
    return pairs


def _losers(member, roots):
    (key, value), shard, is_new, representative = member
    survivor_key, survivor_hash = roots.get(representative[0], representative)
    if not is_new or survivor_key == key:
        return
    yield shard, failure({"key": key}, Stage.DEDUP_IMAGE, Reason.NEAR_DUPLICATE,
                         f"Hamming distance {hamming(value, survivor_hash)} from {survivor_key}, "
                         "which is kept")


class EvalIndex:
    """The evaluation set's hashes in buckets by band: which of them a hash is close to."""

    def __init__(self, hashes: list[tuple[str, str]], bits: int, distance: int):
        self._bits, self._distance = bits, distance
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._words = to_words([value for value, _ in hashes], bits)
        self._sources = [source for _, source in hashes]
        for index, (value, _) in enumerate(hashes):
            for band in bands(value, bits, distance):
                self._buckets.setdefault(band, []).append(index)

    def closest(self, value: str) -> tuple[int, str] | None:
        """(distance, source) of the closest evaluation image within the distance, or None."""
        candidates = sorted({i for band in bands(value, self._bits, self._distance)
                             for i in self._buckets.get(band, ())})
        if not candidates:
            return None
        found = distances(to_words([value], self._bits), self._words[candidates])[0]
        best = int(np.argmin(found))
        if found[best] > self._distance:
            return None
        return int(found[best]), self._sources[candidates[best]]


class _AgainstEvaluationSet(beam.DoFn):
    """(node, shard, is_new) -> those not close to an evaluation image; the others' failure
    records on the "eval" output. Samples of completed shards pass: they are written."""

    def __init__(self, bits: int, distance: int):
        self._bits, self._distance = bits, distance
        self._index = None

    def process(self, member, eval_hashes):
        (key, value), shard, is_new = member
        if self._index is None:
            self._index = EvalIndex(eval_hashes, self._bits, self._distance)
        close = self._index.closest(value) if is_new else None
        if close is None:
            yield member
            return
        distance, source = close
        yield beam.pvalue.TaggedOutput("eval", (shard, failure(
            {"key": key}, Stage.DEDUP_IMAGE, Reason.EVAL_DUPLICATE,
            f"Hamming distance {distance} from evaluation image {source}")))


class FindNearDuplicates(beam.PTransform):
    """Which samples are near-duplicates of a kept one, or close to an evaluation image.

    Input: (key, shard, hash) triples of this run's samples; `written`: the same of the samples
    of completed shards that took part in grouping (never removed); `eval_hashes`: (hash,
    source) pairs.
    Output: (shard, failure record) for every removed sample of this run.
    """

    def __init__(self, config: DedupConfig, bits: int, written=None, eval_hashes=None):
        super().__init__()
        self._config = config
        self._bits = bits
        self._written = written
        self._eval_hashes = eval_hashes

    def expand(self, new):
        c, bits = self._config, self._bits
        nodes = [new | "New nodes" >> beam.Map(lambda t: ((t[0], t[2]), t[1], True))]
        if self._written is not None:
            nodes.append(self._written | "Written nodes" >> beam.Map(
                lambda t: ((t[0], t[2]), t[1], False)))
        nodes = nodes | "All nodes" >> beam.Flatten()
        removed = []
        if self._eval_hashes is not None:
            checked = nodes | "Against the evaluation set" >> beam.ParDo(
                _AgainstEvaluationSet(bits, c.eval_distance),
                beam.pvalue.AsList(self._eval_hashes)).with_outputs("eval", main="kept")
            nodes = checked.kept
            removed.append(checked.eval)
        collapsed = (
            nodes
            | "By hash" >> beam.Map(lambda member: (member[0][1], member))
            | "Identical hashes" >> beam.GroupByKey()
            | "Representatives" >> beam.FlatMap(_representatives).with_outputs(
                "representative", main="members")
        )
        roots = (
            collapsed.representative
            | "Bands" >> beam.FlatMap(_in_bands(bits, c.near_distance))
            | "Group by band" >> beam.GroupByKey()
            | "Close pairs" >> beam.FlatMap(_pairs_in_band(bits, c.near_distance, c.hot_bucket))
            | "Groups" >> beam.CombineGlobally(_Groups())
        )
        removed.append(collapsed.members | "Losers" >> beam.FlatMap(
            _losers, beam.pvalue.AsSingleton(roots)))
        return removed | "Removed" >> beam.Flatten()
