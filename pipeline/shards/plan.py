"""Stage 7: plan the shards before any download, and find the shards an earlier run completed.

Plan. As img2dataset does, a shard is defined by the candidates sent to download (about
`samples_per_shard` of them), not by the samples that survive: shard = hash(key) mod
number_of_shards. The assignment depends only on the set of keys, so it is the same on every
runner, and it is known before any download. Each planned shard records a fingerprint of its
candidate keys.

Resume. A shard folder can hold shards of an earlier run. A shard whose `_stats.json` (written
last, the completion marker) carries the same plan — the same number of shards and the same
key fingerprint — is complete for this run: its candidates are not downloaded again, and its
image hashes join this run's dedup so survivors stay the same. Any other shard is rewritten.
"""

from __future__ import annotations

import typing

import apache_beam as beam

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.records import Reason, colours_of, hashes_of, stable_hash64


def shard_of(key: str, num_shards: int) -> int:
    return stable_hash64("shard", key) % num_shards


def number_of_shards(candidates: int, samples_per_shard: int) -> int:
    return max(1, -(-candidates // samples_per_shard))


class KeyFingerprint(beam.CombineFn):
    """Order-independent fingerprint of a set of keys: (xor of 64-bit key hashes, count)."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, accumulator, key):
        xor, count = accumulator
        return xor ^ stable_hash64("fingerprint", key), count + 1

    def merge_accumulators(self, accumulators):
        xor, count = 0, 0
        for other_xor, other_count in accumulators:
            xor ^= other_xor
            count += other_count
        return xor, count

    def extract_output(self, accumulator):
        xor, count = accumulator
        return {"fingerprint": f"{xor:016x}", "candidates": count}


def read_completed_shards(output: str) -> dict[int, dict]:
    """Stats of every shard an earlier run completed in this output folder."""
    completed = {}
    pattern = storage.join(output, layout.SHARDS_FOLDER, "*" + layout.SHARD_STATS_SUFFIX)
    for path in storage.glob(pattern):
        stats = storage.read_json(path)
        completed[int(stats["shard"])] = stats
    return completed


class ShardPlan(typing.NamedTuple):
    num_shards: beam.PCollection  # a singleton
    pending: beam.PCollection  # (shard, candidate) to download in this run
    pending_plans: beam.PCollection  # (shard, plan) of shards to write in this run
    reused: beam.PCollection  # (shard, stats) of shards an earlier run completed


class PlanShards(beam.PTransform):
    def __init__(self, samples_per_shard: int, completed: dict[int, dict]):
        super().__init__()
        self._samples_per_shard = samples_per_shard
        self._completed = completed

    def expand(self, candidates):
        per_shard, completed = self._samples_per_shard, self._completed
        num_shards = (
            candidates
            | "Count candidates" >> beam.combiners.Count.Globally()
            | "Number of shards" >> beam.Map(number_of_shards, per_shard)
        )
        assigned = candidates | "Assign shard" >> beam.Map(
            lambda c, n: (shard_of(c["key"], n), c), n=beam.pvalue.AsSingleton(num_shards)
        )
        plans = (
            assigned
            | "Keys per shard" >> beam.MapTuple(lambda shard, c: (shard, c["key"]))
            | "Fingerprint" >> beam.CombinePerKey(KeyFingerprint())
            | "Plan" >> beam.Map(
                lambda shard_fp, n: (shard_fp[0], {**shard_fp[1], "num_shards": n}),
                n=beam.pvalue.AsSingleton(num_shards),
            )
        )

        def is_complete(shard_and_plan):
            shard, plan = shard_and_plan
            return completed.get(shard, {}).get("plan") == plan

        reused = (
            plans
            | "Completed earlier" >> beam.Filter(is_complete)
            | "Earlier stats" >> beam.MapTuple(lambda shard, plan: (shard, completed[shard]))
        )
        pending_plans = plans | "Still to write" >> beam.Filter(lambda sp: not is_complete(sp))
        pending = assigned | "Skip completed shards" >> beam.Filter(
            lambda shard_and_candidate, done: shard_and_candidate[0] not in done,
            done=beam.pvalue.AsDict(reused),
        )
        return ShardPlan(num_shards, pending, pending_plans, reused)


def read_written_samples(output: str):
    """(shard, stats) of a completed shard -> its samples' {key, shard, sha256, phash,
    phash_crops, colours, queries}."""

    def read(shard_and_stats):
        shard, stats = shard_and_stats
        if not stats.get("written"):
            return
        table = storage.read_parquet(layout.shard_paths(output, shard)["parquet"])
        columns = [c for c in ("sha256", "phash", "phash_crops", "colours", "key", "queries")
                   if c in table.column_names]
        for row in table.select(columns).to_pylist():
            yield {**row, "shard": shard}

    return read


# Samples of a completed shard that reached near-duplicate grouping but were not written.
GROUPED_REASONS = (Reason.NEAR_DUPLICATE, Reason.OVER_QUERY_CAP)


def read_grouped_drops(output: str):
    """(shard, stats) of a completed shard -> (key, shard, hashes, colours) of its samples that
    took part in near-duplicate grouping and were then dropped (as near-duplicates, or by the
    cap)."""

    def read(shard_and_stats):
        shard, _ = shard_and_stats
        path = layout.shard_paths(output, shard)["failures"]
        if not storage.exists(path):
            return
        table = storage.read_parquet(path)
        # Written before failure records kept the hash. (A bare `return`: Beam warns about a
        # generator with any other `return` line.)
        if "phash" not in table.column_names:
            return
        columns = [c for c in ("key", "reason", "phash", "phash_crops", "colours")
                   if c in table.column_names]
        for row in table.select(columns).to_pylist():
            if row["reason"] in GROUPED_REASONS and row["phash"]:
                yield row["key"], shard, hashes_of(row), colours_of(row)

    return read
