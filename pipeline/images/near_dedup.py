"""Stage 10: near-duplicate images (perceptual hashes within a Hamming distance) are one image,
and images within the distance of an evaluation image are removed.

    (key, shard, hashes) of every sample that survived exact dedup, and of completed shards
      -> against the evaluation set  (a banded index of its hashes, a side input)
      -> identical hashes            (GroupByKey on each hash of each sample: the samples that
                                      share one are linked; one representative per hash)
      -> bands                       (distance + 1 bands per representative: pigeonhole)
      -> close pairs per band        (verified by full distance; hot bands sub-split)
      -> groups                      (a union-find over the links, one survivor per group)
      -> losers                      ((shard, failure record) for every removed new sample)

A sample has several hashes (image_hash: the whole picture and its centre crops). A sample
close to an evaluation image by any of them is removed, which finds a lightly cropped copy.
With `near_crops`, two samples are one picture when any hash of one is within the distance of
any hash of the other; by default only their whole-picture hashes are compared.

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
    """Nodes are sample keys; a group's root is its smallest key, so the result does not
    depend on the order of unions."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        root = self.parent.setdefault(node, node)
        while self.parent[root] != root:  # a loop, not recursion: chains can be long
            root = self.parent[root]
        while node != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


class _Groups(beam.CombineFn):
    """Edges between keys -> {key: the key that survives its group} for every key that is not
    a survivor.

    One accumulator holds the keys that have a near-duplicate (not every sample): the groups
    are resolved on one worker (README: "Near-duplicates")."""

    def create_accumulator(self):
        return UnionFind()

    def add_input(self, groups, edge):
        groups.union(*edge)
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
                roots[node] = root
        return roots


# ------------------------------------------------------------------------- the stage


def _views(member):
    """(key, shard, is_new, hashes) -> (hash, key) for each distinct hash of the sample."""
    key, _, _, hashes = member
    for value in set(hashes):
        yield value, key


def _sharers(hash_and_keys):
    """(hash, keys) -> the hash and the smallest key holding it, on "representative", and
    an edge from that key to every other key that holds it: identical hashes are one node in
    the search, and the samples that share one are one group."""
    value, keys = hash_and_keys
    # Two passes over the grouped values (Beam's are re-iterable), never a sorted copy: a
    # placeholder picture may be shared by millions of URLs.
    smallest = min(keys)
    yield beam.pvalue.TaggedOutput("representative", (value, smallest))
    for key in keys:
        if key != smallest:
            yield smallest, key


def _in_bands(bits: int, distance: int):
    def emit(node):
        for band in bands(node[0], bits, distance):
            yield band, node
    return emit


def _pairs_in_band(bits: int, distance: int, hot_bucket: int):
    def pairs(band_and_nodes):
        _, nodes = band_and_nodes
        nodes = sorted(set(nodes))
        # Views of one picture mostly share their band values: a bucket of one sample's views
        # has nothing to link.
        if len(nodes) < 2 or all(key == nodes[0][1] for _, key in nodes):
            return
        words = to_words([value for value, _ in nodes], bits)
        groups = UnionFind()
        for rows, cols in close_pairs(words, bits, distance, hot_bucket, connect_only=True):
            for i, j in zip(rows.tolist(), cols.tolist()):
                groups.union(nodes[i][1], nodes[j][1])
        # A forest, not every pair: each key to its group's smallest key.
        for key in groups.parent:
            root = groups.find(key)
            if root != key:
                yield root, key
    return pairs


def _hashes_of_survivors(member, roots):
    """The hashes of each sample that survives a group (for the losers' detail)."""
    key, _, _, hashes = member
    if key in roots.survivors:
        yield key, hashes


class _Roots:
    """The groups' roots, and the set of survivors, made once per worker from the side input."""

    def __init__(self, roots: dict):
        self.of = roots
        self.survivors = set(roots.values())


def _closest(hashes, others) -> int:
    return min(hamming(a, b) for a in hashes for b in others)


def _losers(member, roots: _Roots, survivor_hashes):
    key, shard, is_new, hashes = member
    survivor = roots.of.get(key)
    if not is_new or survivor is None:
        return
    yield shard, failure({"key": key}, Stage.DEDUP_IMAGE, Reason.NEAR_DUPLICATE,
                         f"Hamming distance {_closest(hashes, survivor_hashes[survivor])} "
                         f"from {survivor}, which is kept")


class EvalIndex:
    """The evaluation set's hashes (every view of every image) in buckets by band: which of
    them a hash is close to."""

    def __init__(self, images: list[tuple[tuple[str, ...], str]], bits: int, distance: int):
        self._bits, self._distance = bits, distance
        hashes = [(value, source) for views, source in images for value in views]
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._words = to_words([value for value, _ in hashes], bits)
        self._sources = [source for _, source in hashes]
        for index, (value, _) in enumerate(hashes):
            for band in bands(value, bits, self._distance):
                self._buckets.setdefault(band, []).append(index)

    def closest(self, hashes) -> tuple[int, str] | None:
        """(distance, source) of the evaluation image closest to any of `hashes` (a sample's
        views), within the distance, or None."""
        candidates = sorted({i for value in hashes
                             for band in bands(value, self._bits, self._distance)
                             for i in self._buckets.get(band, ())})
        if not candidates:
            return None
        found = distances(to_words(list(hashes), self._bits), self._words[candidates]).min(axis=0)
        best = int(np.argmin(found))
        if found[best] > self._distance:
            return None
        return int(found[best]), self._sources[candidates[best]]


class _AgainstEvaluationSet(beam.DoFn):
    """(key, shard, is_new, hashes) -> those not close to an evaluation image; the others'
    failure records on the "eval" output. Samples of completed shards pass: they are written."""

    def __init__(self, bits: int, distance: int):
        self._bits, self._distance = bits, distance
        self._index = None

    def process(self, member, eval_hashes):
        key, shard, is_new, hashes = member
        if self._index is None:
            self._index = EvalIndex(eval_hashes, self._bits, self._distance)
        close = self._index.closest(hashes) if is_new else None
        if close is None:
            yield member
            return
        distance, source = close
        yield beam.pvalue.TaggedOutput("eval", (shard, failure(
            {"key": key}, Stage.DEDUP_IMAGE, Reason.EVAL_DUPLICATE,
            f"Hamming distance {distance} from evaluation image {source}")))


class FindNearDuplicates(beam.PTransform):
    """Which samples are near-duplicates of a kept one, or close to an evaluation image.

    Input: (key, shard, hashes) triples of this run's samples, `hashes` a sample's views (the
    whole picture's hash first); `written`: the same of the samples of completed shards that
    took part in grouping (never removed); `eval_hashes`: (hashes, source) pairs.
    A sample is close to an evaluation image when any of their hashes are within the eval
    distance. Two samples are near-duplicates when their whole-picture hashes are within the
    distance or, with `config.near_crops`, any hash of one and any hash of the other.
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
        members = [new | "New samples" >> beam.MapTuple(
            lambda key, shard, hashes: (key, shard, True, tuple(hashes)))]
        if self._written is not None:
            members.append(self._written | "Written samples" >> beam.MapTuple(
                lambda key, shard, hashes: (key, shard, False, tuple(hashes))))
        members = members | "All samples" >> beam.Flatten()
        removed = []
        if self._eval_hashes is not None:
            checked = members | "Against the evaluation set" >> beam.ParDo(
                _AgainstEvaluationSet(bits, c.eval_distance),
                beam.pvalue.AsList(self._eval_hashes)).with_outputs("eval", main="kept")
            members = checked.kept
            removed.append(checked.eval)
        if not c.near_crops:
            members = members | "Whole pictures" >> beam.Map(
                lambda member: (*member[:3], member[3][:1]))
        shared = (
            members
            | "Hashes" >> beam.FlatMap(_views)
            | "Identical hashes" >> beam.GroupByKey()
            | "Sharers" >> beam.FlatMap(_sharers).with_outputs("representative", main="edges")
        )
        close = (
            shared.representative
            | "Bands" >> beam.FlatMap(_in_bands(bits, c.near_distance))
            | "Group by band" >> beam.GroupByKey()
            | "Close pairs" >> beam.FlatMap(_pairs_in_band(bits, c.near_distance, c.hot_bucket))
        )
        roots = (
            (shared.edges, close)
            | "Edges" >> beam.Flatten()
            | "Groups" >> beam.CombineGlobally(_Groups())
            | "Roots" >> beam.Map(_Roots)
        )
        survivor_hashes = members | "Hashes of survivors" >> beam.FlatMap(
            _hashes_of_survivors, beam.pvalue.AsSingleton(roots))
        removed.append(members | "Losers" >> beam.FlatMap(
            _losers, beam.pvalue.AsSingleton(roots), beam.pvalue.AsDict(survivor_hashes)))
        return removed | "Removed" >> beam.Flatten()
