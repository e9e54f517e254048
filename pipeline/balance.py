"""Balancing, MetaCLIP's two passes: count matches per query, then sample each candidate.

Pass 1 (`CountQueryMatches`) counts, per query id, the candidates that matched it over the
whole pool. Each worker sums its bundle in a local dict and emits one (query id, n) pair per
distinct query, so the shuffle carries at most one pair per query per bundle; a CombinePerKey
adds the partial sums across workers.

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


class _CountLocally(beam.DoFn):
    """candidate -> (query id, matches in this bundle), summed before the shuffle."""

    def start_bundle(self):
        self._counts: dict[int, int] = {}

    def process(self, candidate):
        counts = self._counts
        for query_id in candidate["query_ids"]:
            counts[query_id] = counts.get(query_id, 0) + 1
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
    """Candidates (with `query_ids`) -> (query id, number of candidates that matched it)."""

    def expand(self, candidates):
        return (
            candidates
            | "Count in bundle" >> beam.ParDo(_CountLocally())
            | "Sum over workers" >> beam.CombinePerKey(sum)
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
