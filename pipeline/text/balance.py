"""Stage 5, balancing, MetaCLIP's two passes: count matches per query, then sample each candidate.

Pass 1 counts, per query id, the candidates that matched it over the whole pool: from the
parquet parts curation spilled (`CountQueryMatchesInParts`, numpy over each part), or from
candidates (`CountQueryMatches`: each worker sums its bundle). Either way the shuffle carries
one count vector (int64, indexed by query id) per part or bundle, and a combiner adds them.

Pass 2 (`BalanceQueries`) keeps a candidate with probability

    p = 1 - prod over its matched queries q of (1 - min(1, target / count(q)))

where target = per-query cap x oversample. A query with fewer than `target` matches keeps every
candidate (p = 1); a head query keeps about `target` of its candidates, more where they also
match rarer queries. The draw is a hash of (seed, key) mapped to [0, 1): the same candidate
gets the same verdict on every runner, worker count and rerun, with no random state.
"""

from __future__ import annotations

import itertools

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from openwit.pipeline.core import storage
from openwit.pipeline.core.records import Reason, Stage, failure, in_global_window, stable_hash64
from openwit.pipeline.text.config import BalanceConfig
from openwit.pipeline.text.steps import Step

_TWO_TO_64 = float(2**64)


def keep_probability(counts: list[int], target: float) -> float:
    """MetaCLIP's sampling probability for a candidate whose queries have these counts."""
    if not counts:  # no query table: nothing to balance
        return 1.0
    miss = 1.0
    for count in counts:
        if count <= target:
            return 1.0
        miss *= 1.0 - target / count
    return 1.0 - miss


def balance_draw(seed: int, key: str) -> float:
    return stable_hash64("balance", str(seed), key) / _TWO_TO_64


def count_vector(query_id_lists) -> np.ndarray:
    """How many of these candidates matched each query id: int64, indexed by query id."""
    ids = np.fromiter(itertools.chain.from_iterable(query_id_lists), dtype=np.int64)
    return np.bincount(ids)


class SumCountVectors(beam.CombineFn):
    """Adds count vectors of any lengths (a vector is as long as its largest id + 1)."""

    def create_accumulator(self):
        return np.zeros(0, dtype=np.int64)

    def add_input(self, total, counts):
        if len(total) < len(counts):
            total = np.concatenate([total, np.zeros(len(counts) - len(total), np.int64)])
        total[:len(counts)] += counts
        return total

    def merge_accumulators(self, totals):
        merged = self.create_accumulator()
        for total in totals:
            merged = self.add_input(merged, total)
        return merged

    def extract_output(self, total):
        return total


class _CountInBundle(beam.DoFn):
    """Batches (lists) of candidates -> one count vector per bundle."""

    def setup(self):
        self._sum = SumCountVectors()

    def start_bundle(self):
        # One running total: a vector per batch would hold (largest query id) x 8 bytes each.
        self._total = self._sum.create_accumulator()

    def process(self, batch):
        self._total = self._sum.add_input(self._total, count_vector(c["query_ids"] for c in batch))

    def finish_bundle(self):
        yield in_global_window(self._total)


class CountQueryMatches(beam.PTransform):
    """Batches (lists) of candidates -> a singleton: the number of candidates that matched
    each query, as an int64 vector indexed by query id."""

    def expand(self, candidates):
        return (
            candidates
            | "Count in bundle" >> beam.ParDo(_CountInBundle())
            | "Sum over workers" >> beam.CombineGlobally(SumCountVectors())
        )


class _CountInPartFn(beam.DoFn):
    """A parquet part of matched candidates -> the count vector of its rows that did not
    lose URL dedup, counted with numpy over the whole part (no Python work per candidate)."""

    def process(self, path, losers):
        table = storage.read_parquet(path, columns=["row", "query_ids"])
        if losers:
            losing_rows = pa.array(list(losers), type=pa.int64())
            table = table.filter(pc.invert(pc.is_in(table.column("row"), losing_rows)))
        ids = pc.list_flatten(table.column("query_ids")).to_numpy(zero_copy_only=False)
        yield np.bincount(ids.astype(np.int64))


class CountQueryMatchesInParts(beam.PTransform):
    """Paths of parquet parts (rows with `row` and `query_ids`) -> a singleton count vector
    (as `CountQueryMatches`), leaving out the rows in `duplicates` ((loser row, winner key)
    pairs). One vector per part crosses the shuffle, not one pair per query."""

    def __init__(self, duplicates: beam.PCollection):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, paths):
        return (
            paths
            | "Count in part" >> beam.ParDo(_CountInPartFn(),
                                            losers=beam.pvalue.AsDict(self._duplicates))
            | "Sum over parts" >> beam.CombineGlobally(SumCountVectors())
        )


class BalanceStep(Step):
    """Survivors carry `keep_probability`; side input `counts`: the count vector."""

    stage = Stage.BALANCE
    side_input = "counts"

    def __init__(self, config: BalanceConfig):
        self._config = config

    def setup(self):
        self._balanced_out = Metrics.counter("openwit", "balance.dropped")
        self._counts_seen, self._counts = None, []

    def run(self, candidates, counts):
        target, seed = self._config.target, self._config.seed
        if counts is not self._counts_seen:
            # Python ints index and divide several times faster than numpy scalars; the side
            # input is the same object for every batch, so this runs once per worker.
            self._counts_seen, self._counts = counts, counts.tolist()
        counts = self._counts
        kept, failures = [], []
        for candidate in candidates:
            probability = keep_probability([counts[q] for q in candidate["query_ids"]], target)
            if probability < 1.0 and balance_draw(seed, candidate["key"]) >= probability:
                failures.append(failure(candidate, Stage.BALANCE, Reason.BALANCED_OUT,
                                        f"keep probability {probability:.4g}"))
            else:
                kept.append({**candidate, "keep_probability": probability})
        self._balanced_out.inc(len(failures))
        return kept, failures
