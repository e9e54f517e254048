"""Balancing, MetaCLIP's two passes: count matches per query, then sample each candidate.

Pass 1 counts, per query id, the candidates that matched it over the whole pool: from the
parquet parts curation spilled (`CountQueryMatchesInParts`, numpy over each part), or from
candidates (`CountQueryMatches`: each worker sums its bundle in a local dict). Either way the
shuffle carries at most one (query id, n) pair per query per part or bundle, and a
CombinePerKey adds the partial sums across workers.

Pass 2 (`BalanceQueries`) keeps a candidate with probability

    p = 1 - prod over its matched queries q of (1 - min(1, target / count(q)))

where target = per-query cap x oversample. A query with fewer than `target` matches keeps every
candidate (p = 1); a head query keeps about `target` of its candidates, more where they also
match rarer queries. The draw is a hash of (seed, key) mapped to [0, 1): the same candidate
gets the same verdict on every runner, worker count and rerun, with no random state.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import BalanceConfig
from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, stable_hash64, tagged_failure

_TWO_TO_64 = float(2**64)
FLUSH_DISTINCT_QUERIES = 200_000  # bound on a bundle's local counts before they are emitted


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


def query_ids_of(candidate) -> list:
    return candidate["query_ids"]


class _CountLocally(beam.DoFn):
    """candidate -> (key, occurrences in this bundle) for the keys `keys_of` gives, summed
    before the shuffle."""

    def __init__(self, keys_of=query_ids_of):
        self._keys_of = keys_of

    def start_bundle(self):
        self._counts: dict = {}

    def process(self, candidate):
        counts = self._counts
        for key in self._keys_of(candidate):
            counts[key] = counts.get(key, 0) + 1
        if len(counts) >= FLUSH_DISTINCT_QUERIES:
            yield from self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        for pair in self._flush():
            yield WindowedValue(pair, 0, [GlobalWindow()])

    def _flush(self):
        counts, self._counts = self._counts, {}
        return counts.items()


class CountQueryMatches(beam.PTransform):
    """Candidates -> (key, number of candidates with it); keys: `keys_of(candidate)`, by
    default the matched query ids."""

    def __init__(self, keys_of=query_ids_of):
        super().__init__()
        self._keys_of = keys_of

    def expand(self, candidates):
        return (
            candidates
            | "Count in bundle" >> beam.ParDo(_CountLocally(self._keys_of))
            | "Sum over workers" >> beam.CombinePerKey(sum)
        )


class _CountInPartFn(beam.DoFn):
    """A parquet part of matched candidates -> (query id, matches) of its rows that did not
    lose URL dedup, counted with numpy over the whole part (no Python work per candidate)."""

    def process(self, path, losers):
        import io

        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from pipeline import storage

        table = pq.read_table(io.BytesIO(storage.read_bytes(path)), columns=["row", "query_ids"])
        if losers:
            losing_rows = pa.array(list(losers), type=pa.int64())
            table = table.filter(pc.invert(pc.is_in(table.column("row"), losing_rows)))
        ids = pc.list_flatten(table.column("query_ids")).to_numpy(zero_copy_only=False)
        if not len(ids):
            return
        counts = np.bincount(ids)
        for query_id in np.flatnonzero(counts):
            yield int(query_id), int(counts[query_id])


class CountQueryMatchesInParts(beam.PTransform):
    """Paths of parquet parts (rows with `row` and `query_ids`) -> (query id, candidates that
    matched it), leaving out the rows in `duplicates` ((loser row, winner key) pairs)."""

    def __init__(self, duplicates: beam.PCollection):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, paths):
        return (
            paths
            | "Count in part" >> beam.ParDo(_CountInPartFn(),
                                            losers=beam.pvalue.AsDict(self._duplicates))
            | "Sum over parts" >> beam.CombinePerKey(sum)
        )


class BalanceFn(beam.DoFn):
    def __init__(self, config: BalanceConfig):
        self._config = config

    def setup(self):
        self._balanced_out = Metrics.counter("openwit", "balance.dropped")

    def process(self, candidate, counts):
        target = self._config.target
        probability = keep_probability([counts[q] for q in candidate["query_ids"]], target)
        if probability < 1.0 and balance_draw(self._config.seed, candidate["key"]) >= probability:
            self._balanced_out.inc()
            yield tagged_failure(candidate, Stage.BALANCE, Reason.BALANCED_OUT,
                                 f"keep probability {probability:.4g}")
            return
        yield {**candidate, "keep_probability": probability}


class BalanceQueries(beam.PTransform):
    """Candidates -> StageResult; survivors carry `keep_probability`.

    `counts`: the (query id, count) pairs of pass 1. Candidates without queries (no query
    table) are all kept.
    """

    def __init__(self, config: BalanceConfig, counts: beam.PCollection):
        super().__init__()
        self._config = config
        self._counts = counts

    def expand(self, candidates):
        result = candidates | "Sample" >> beam.ParDo(
            BalanceFn(self._config), counts=beam.pvalue.AsDict(self._counts)
        ).with_outputs(FAILED, main=KEPT)
        return StageResult(result[KEPT], result[FAILED])
