"""Stage 6: at most `per_query_cap` samples per query, deterministic for a seed.

Queries are counted first. Each query with more than `cap` candidates (an over-full query)
keeps the `cap` candidates that matter most to the rest of the corpus: those whose rarest
matched query is rarest, ties broken by a rank in [0, 1) hashed from (seed, key). A candidate
survives when it is among the kept ones of *every* over-full query it matched.

- Exact: the survivors of a query are a subset of its `cap` chosen ones, so no query exceeds
  the cap, on any runner and any number of workers.
- Tail first: "a red hexagon" competes inside "red" with the priority of "hexagon"; a plain
  random choice per query would throw tail concepts away with the head samples they ride on.
- Distributed: counts are a CombinePerKey; the choice per over-full query is a
  `Top.SmallestPerKey` (memory: `cap` priorities per over-full query, nothing for the others).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import CapConfig
from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, stable_hash64, tagged_failure

_TWO_TO_64 = float(2**64)


def cap_rank(seed: int, key: str) -> float:
    return stable_hash64("cap", str(seed), key) / _TWO_TO_64


def cap_priority(seed: int, candidate: dict, counts: dict[str, int]) -> tuple[int, float]:
    """Smaller is kept first: (count of the candidate's rarest query, seeded random rank)."""
    rarest = min(counts[q] for q in candidate["queries"])
    return rarest, cap_rank(seed, candidate["key"])


def _threshold(cap: int):
    def of(query_and_smallest):
        query, smallest = query_and_smallest
        if len(smallest) >= cap:
            yield query, max(smallest)

    return of


class ApplyCapFn(beam.DoFn):
    def __init__(self, seed: int):
        self._seed = seed

    def setup(self):
        self._capped = Metrics.counter("openwit", "cap.dropped")

    def process(self, candidate, counts, thresholds):
        if not candidate["queries"]:
            yield candidate
            return
        priority = cap_priority(self._seed, candidate, counts)
        for query in candidate["queries"]:
            limit = thresholds.get(query)
            if limit is not None and priority > limit:
                self._capped.inc()
                yield tagged_failure(candidate, Stage.CAP, Reason.OVER_QUERY_CAP,
                                     f"query {query!r} is over its cap")
                return
        yield candidate


class CapPerQuery(beam.PTransform):
    def __init__(self, config: CapConfig):
        super().__init__()
        self._config = config

    def expand(self, candidates):
        cap, seed = self._config.per_query_cap, self._config.seed
        counts = (
            candidates
            | "Queries" >> beam.FlatMap(lambda c: [(q, 1) for q in c["queries"]])
            | "Count per query" >> beam.CombinePerKey(sum)
        )
        counts_by_query = beam.pvalue.AsDict(counts)

        def priorities_in_full_queries(candidate, counts):
            if not any(counts[q] > cap for q in candidate["queries"]):
                return []
            priority = cap_priority(seed, candidate, counts)
            return [(q, priority) for q in candidate["queries"] if counts[q] > cap]

        thresholds = (
            candidates
            | "Priority per over-full query" >> beam.FlatMap(
                priorities_in_full_queries, counts=counts_by_query
            )
            | "Most needed" >> beam.combiners.Top.SmallestPerKey(cap)
            | "Threshold" >> beam.FlatMap(_threshold(cap))
        )
        result = candidates | "Apply cap" >> beam.ParDo(
            ApplyCapFn(seed), counts=counts_by_query, thresholds=beam.pvalue.AsDict(thresholds)
        ).with_outputs(FAILED, main=KEPT)
        return StageResult(result[KEPT], result[FAILED])
