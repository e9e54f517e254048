"""Stage 10: near-duplicate images (perceptual hashes within a Hamming distance) are one image,
and images within the distance of an evaluation image are removed.

    (key, shard, hashes, colours) of every sample that survived exact dedup, and of
    completed shards
      -> against the evaluation set  (a banded index of its hashes, a side input)
      -> identical views             (GroupByKey on each hash and colour of each sample: the
                                      samples that share one are linked; one representative)
      -> bands                       (distance + 1 bands per representative: pigeonhole)
      -> close pairs per band        (verified by full distance; hot bands sub-split)
      -> groups                      (a union-find over the links, one survivor per group)
      -> losers                      ((shard, failure record) for every removed new sample)

A sample has several views (image_hash: the whole picture and its centre crops), each with a
hash and a colour. A sample close to an evaluation image by the hash of any view is removed,
which finds a lightly cropped copy. Two samples are one picture when a view of one and a view
of the other have hashes within the distance and colours that agree (in levels of
`colour_step`, image_hash.colours_close); without `near_crops` only whole pictures are
compared, with a `colour_step` of 0 hashes alone.

Never all pairs: two hashes within `distance` bits agree exactly on at least one of
`distance + 1` bands, so only hashes that share a band value are compared. A band value that
very many hashes share (blank pictures, placeholders) is a hot bucket; it is sub-split on the
bits its members do not all share, again into `distance + 1` parts (`close_pairs`), so a
bucket's work stays near-linear whatever its size. A bucket whose hashes are all close (one
flat picture in many colours) is split the same way on the colours (`colour_pairs`).
Identical views never reach a bucket more than once: they are collapsed first.

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
from openwit.pipeline.images.image_hash import (
    COLOUR_VALUES, UNKNOWN_COLOUR, band_edges, bands, colour_levels, colours_close, distances,
    hamming, to_words)

PAIR_BLOCK = 1024  # rows compared at once in a bucket: a block x bucket distance matrix


# ------------------------------------------------------------------ pairs within a bucket


def _block_pairs(words: np.ndarray, distance: int, levels: np.ndarray | None = None):
    """Every (i, j), i < j, within `distance` (and whose colour `levels` agree): blocks of
    rows against the rows after them."""
    for start in range(0, len(words), PAIR_BLOCK):
        block = distances(words[start:start + PAIR_BLOCK], words[start:])
        rows, columns = np.nonzero(block <= distance)
        rows = rows + start
        columns = columns + start
        later = columns > rows
        rows, columns = rows[later], columns[later]
        if levels is not None and len(rows):
            agree = colours_close(levels[rows], levels[columns])
            rows, columns = rows[agree], columns[agree]
        if len(rows):
            yield rows, columns


def colour_pairs(levels: np.ndarray, hot_bucket: int, connect_only: bool = False,
                 settled: frozenset = frozenset()):
    """(i, j) index arrays of the rows of `levels` whose colours agree (rows whose hashes are
    all close already).

    Up to `hot_bucket` rows are compared directly. More are split on the cell value that
    spreads widest (not in `settled`): rows more than one level apart there never agree, so
    each value is searched together with the next one. When every value spans at most one
    level, all rows agree: with `connect_only`, a star."""
    n = len(levels)
    if n < 2:
        return
    unknown = levels[:, 0] == UNKNOWN_COLOUR
    if unknown.any():
        # An unknown colour agrees with every row.
        first = int(np.flatnonzero(unknown)[0])
        others = np.delete(np.arange(n), first)
        yield np.full(n - 1, first, dtype=np.int64), others
        known = np.flatnonzero(~unknown)
        if connect_only:
            return
        for rows, cols in colour_pairs(levels[known], hot_bucket, connect_only, settled):
            yield known[rows], known[cols]
        unknown_rows = np.flatnonzero(unknown)
        for position, row in enumerate(unknown_rows[1:], start=1):
            later = np.delete(np.arange(n), unknown_rows[:position + 1])
            yield np.full(len(later), row, dtype=np.int64), later
        return
    if n <= hot_bucket:
        for start in range(0, n, PAIR_BLOCK):
            agree = colours_close(levels[start:start + PAIR_BLOCK, None], levels[None, start:])
            rows, columns = np.nonzero(agree)
            rows, columns = rows + start, columns + start
            later = columns > rows
            if later.any():
                yield rows[later], columns[later]
        return
    spread = levels.max(axis=0) - levels.min(axis=0)
    spread[list(settled)] = 0
    widest = int(np.argmax(spread))
    if spread[widest] <= 1:
        if connect_only:
            yield np.zeros(n - 1, dtype=np.int64), np.arange(1, n)
        else:
            yield from colour_pairs(levels, n, connect_only, settled)
        return
    values = levels[:, widest]
    for value in np.unique(values):
        members = np.flatnonzero((values == value) | (values == value + 1))
        for rows, cols in colour_pairs(levels[members], hot_bucket, connect_only,
                                       settled | {widest}):
            yield members[rows], members[cols]


def _bit_columns(words: np.ndarray, bits: int) -> np.ndarray:
    """(n, bits) array of 0/1, the first column the top bit."""
    columns = np.empty((len(words), bits), dtype=np.uint8)
    for bit in range(bits):
        position = bits - 1 - bit
        word = words.shape[1] - 1 - position // 64
        columns[:, bit] = (words[:, word] >> np.uint64(position % 64)) & np.uint64(1)
    return columns


def close_pairs(words: np.ndarray, bits: int, distance: int, hot_bucket: int,
                levels: np.ndarray | None = None, connect_only: bool = False):
    """(i, j) index arrays of the hashes (rows of `words`) within `distance` of each other
    and, given colour `levels` (one row per hash), whose colours agree.

    A bucket of at most `hot_bucket` hashes is compared block by block. A bigger one is split
    on the bits where its hashes differ, into `distance + 1` parts; two hashes within the
    distance agree exactly on one part, so each part's value groups are searched in turn (a
    pair may be yielded more than once). A bucket whose hashes differ in at most `distance`
    bits altogether (every pair is close) is left to its colours (`colour_pairs`); when
    `connect_only`, pairs that agree are yielded as a forest that connects them, not each.
    """
    n = len(words)
    if n < 2:
        return
    if n <= hot_bucket:
        yield from _block_pairs(words, distance, levels)
        return
    columns = _bit_columns(words, bits)
    varying = np.nonzero(columns.min(axis=0) != columns.max(axis=0))[0]
    if len(varying) <= distance:
        if levels is not None:
            yield from colour_pairs(levels, hot_bucket, connect_only)
        elif connect_only:
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
        yield from _block_pairs(words, distance, levels)
        return
    for groups in parts:
        for members in groups:
            if len(members) < 2:
                continue
            for rows, cols in close_pairs(words[members], bits, distance, hot_bucket,
                                          None if levels is None else levels[members],
                                          connect_only):
                yield members[rows], members[cols]


def near_pairs(hashes: list[str], bits: int, distance: int, hot_bucket: int,
               levels: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Every pair (i < j) of `hashes` within `distance` (and whose colour `levels` agree), by
    bands: what the pipeline finds, in one process (for tests and the benchmark)."""
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, value in enumerate(hashes):
        for band in bands(value, bits, distance):
            buckets.setdefault(band, []).append(index)
    found = set()
    for members in buckets.values():
        members = np.asarray(members)
        for rows, cols in close_pairs(to_words([hashes[m] for m in members], bits), bits,
                                      distance, hot_bucket,
                                      None if levels is None else levels[members]):
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


def _views(colour_step: int):
    """(key, shard, is_new, hashes, colours) -> ((hash, colour levels), key) for each distinct
    view of the sample; the levels as bytes, b"" when the colour is unknown or not compared."""

    def views(member):
        key, _, _, hashes, colours = member
        if colour_step and colours is not None:
            levels = [row.tobytes() for row in colour_levels(colours, colour_step)]
        else:
            levels = [b""] * len(hashes)
        for view in set(zip(hashes, levels)):
            yield view, key

    return views


def _sharers(view_and_keys):
    """(view, keys) -> the view and the smallest key holding it, on "representative", and
    an edge from that key to every other key that holds it: identical views are one node in
    the search, and the samples that share one are one group."""
    value, keys = view_and_keys
    # Two passes over the grouped values (Beam's are re-iterable), never a sorted copy: a
    # placeholder picture may be shared by millions of URLs.
    smallest = min(keys)
    yield beam.pvalue.TaggedOutput("representative", (value, smallest))
    for key in keys:
        if key != smallest:
            yield smallest, key


def _in_bands(bits: int, distance: int):
    def emit(node):
        (value, _), _ = node
        for band in bands(value, bits, distance):
            yield band, node
    return emit


def _levels_of(views) -> np.ndarray | None:
    """The colour levels of (hash, levels bytes) views as rows; None when none is known."""
    if all(not levels for _, levels in views):
        return None
    unknown = np.full(COLOUR_VALUES, UNKNOWN_COLOUR, dtype=np.int16)
    return np.stack([np.frombuffer(levels, dtype=np.int16) if levels else unknown
                     for _, levels in views])


def _pairs_in_band(bits: int, distance: int, hot_bucket: int):
    def pairs(band_and_nodes):
        _, nodes = band_and_nodes
        nodes = sorted(set(nodes))
        # Views of one picture mostly share their band values: a bucket of one sample's views
        # has nothing to link.
        if len(nodes) < 2 or all(key == nodes[0][1] for _, key in nodes):
            return
        views = [view for view, _ in nodes]
        words = to_words([value for value, _ in views], bits)
        groups = UnionFind()
        for rows, cols in close_pairs(words, bits, distance, hot_bucket, _levels_of(views),
                                      connect_only=True):
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
    key, _, _, hashes, _ = member
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
    key, shard, is_new, hashes, _ = member
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
    """(key, shard, is_new, hashes, colours) -> those not close to an evaluation image (by
    hash alone); the others' failure records on the "eval" output. Samples of completed shards
    pass: they are written."""

    def __init__(self, bits: int, distance: int):
        self._bits, self._distance = bits, distance
        self._index = None

    def process(self, member, eval_hashes):
        key, shard, is_new, hashes, _ = member
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


def _member(is_new: bool):
    def member(key, shard, hashes, colours):
        return key, shard, is_new, tuple(hashes), None if colours is None else tuple(colours)
    return member


def _whole_picture(member):
    key, shard, is_new, hashes, colours = member
    return key, shard, is_new, hashes[:1], None if colours is None else colours[:1]


class FindNearDuplicates(beam.PTransform):
    """Which samples are near-duplicates of a kept one, or close to an evaluation image.

    Input: (key, shard, hashes, colours) of this run's samples, `hashes` the hash of each of
    a sample's views (the whole picture's first), `colours` their colours (or None: compared by
    hash alone); `written`: the same of the samples of completed shards that took part in
    grouping (never removed); `eval_hashes`: (hashes, source) pairs.
    A sample is close to an evaluation image when any of their hashes are within the eval
    distance. Two samples are near-duplicates when a view of one and a view of the other (with
    `config.near_crops`; otherwise their whole pictures) have hashes within the distance and
    colours that agree in levels of `config.colour_step` (0: hashes alone).
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
        members = [new | "New samples" >> beam.MapTuple(_member(is_new=True))]
        if self._written is not None:
            members.append(self._written | "Written samples" >> beam.MapTuple(
                _member(is_new=False)))
        members = members | "All samples" >> beam.Flatten()
        removed = []
        if self._eval_hashes is not None:
            checked = members | "Against the evaluation set" >> beam.ParDo(
                _AgainstEvaluationSet(bits, c.eval_distance),
                beam.pvalue.AsList(self._eval_hashes)).with_outputs("eval", main="kept")
            members = checked.kept
            removed.append(checked.eval)
        if not c.near_crops:
            members = members | "Whole pictures" >> beam.Map(_whole_picture)
        shared = (
            members
            | "Views" >> beam.FlatMap(_views(c.colour_step))
            | "Identical views" >> beam.GroupByKey()
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
