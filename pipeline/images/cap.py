"""Stage 11, the exact cap: at most `per_query_cap` samples per query, deterministic for a seed.

It runs after download and image dedup, where balancing's over-sampling is brought back to
the cap on the samples that actually made it.

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

from openwit.pipeline.images.config import CapConfig
from openwit.pipeline.core.records import Reason, Stage, failure, stable_hash64

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


def over_cap_query(candidate: dict, counts: dict, thresholds: dict, seed: int) -> str | None:
    """The first over-full query that does not keep this candidate, or None."""
    if not candidate["queries"]:
        return None
    priority = cap_priority(seed, candidate, counts)
    for query in candidate["queries"]:
        limit = thresholds.get(query)
        if limit is not None and priority > limit:
            return query
    return None


class CapThresholds(beam.PTransform):
    """Candidates -> (counts, thresholds): (query, count) and (query, largest kept priority)
    for every query with more than `cap` candidates."""

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

        def priorities_in_full_queries(candidate, counts):
            if not any(counts[q] > cap for q in candidate["queries"]):
                return []
            priority = cap_priority(seed, candidate, counts)
            return [(q, priority) for q in candidate["queries"] if counts[q] > cap]

        thresholds = (
            candidates
            | "Priority per over-full query" >> beam.FlatMap(
                priorities_in_full_queries, counts=beam.pvalue.AsDict(counts)
            )
            | "Most needed" >> beam.combiners.Top.SmallestPerKey(cap)
            | "Threshold" >> beam.FlatMap(_threshold(cap))
        )
        return counts, thresholds


class ExactCap(beam.PTransform):
    """The exact cap on what download and image dedup left.

    Input: {key, shard, queries, new} per surviving sample; `new` is false for samples of
    shards an earlier run completed, which count towards every query but are not rewritten.
    Output: (shard, failure record) for each new sample over the cap; the record has the key,
    and the shard writer adds url and caption from the sample.
    """

    def __init__(self, config: CapConfig):
        super().__init__()
        self._config = config

    def expand(self, samples):
        seed = self._config.seed
        counts, thresholds = samples | "Thresholds" >> CapThresholds(self._config)

        def drops(sample, counts, thresholds):
            if not sample["new"]:
                return
            query = over_cap_query(sample, counts, thresholds, seed)
            if query is not None:
                yield sample["shard"], failure({"key": sample["key"]}, Stage.CAP,
                                               Reason.OVER_QUERY_CAP,
                                               f"query {query!r} is over its cap")

        return samples | "Over the cap" >> beam.FlatMap(
            drops, counts=beam.pvalue.AsDict(counts), thresholds=beam.pvalue.AsDict(thresholds))
