"""Stage 8: plan shards before download, write each shard once it is complete, resume.

Plan. As img2dataset does, a shard is defined by the candidates sent to download (about
`samples_per_shard` of them), not by the samples that survive: shard = hash(key) mod
number_of_shards. The assignment depends only on the set of keys, so it is the same on every
runner, and it is known before any download. Each planned shard records a fingerprint of its
candidate keys.

Resume. A shard folder can hold shards of an earlier run. A shard whose `_stats.json` (written
last, the completion marker) carries the same plan — the same number of shards and the same
key fingerprint — is complete for this run: its candidates are not downloaded again, and its
image hashes join this run's dedup so survivors stay the same. Any other shard is rewritten.

Write. All of a shard's samples, failures and duplicate verdicts meet in one CoGroupByKey; the
samples are sorted by key and written as `NNNNNN.tar` (webdataset's TarWriter, fixed mtime and
owner, so reruns are byte-identical), `NNNNNN.parquet` (the same metadata, one row per sample)
and `NNNNNN_stats.json`; the shard's failures go to `failures/shard-NNNNNN.parquet`. Every file
is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import collections
import io
import json
import typing

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from pipeline import storage
from pipeline.progress import LOGGER
from pipeline.records import FAILURE_SCHEMA, failure, stable_hash64

SHARDS_FOLDER = "shards"
FAILURES_FOLDER = "failures"
SHARD_NAME_DIGITS = 6
TAR_MTIME = 0  # a fixed timestamp: the same inputs give the same bytes on every rerun
TAR_OWNER = "openwit"

SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("queries", pa.list_(pa.string())),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("original_bytes", pa.int64()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
    ]
)
METADATA_FIELDS = tuple(SAMPLE_SCHEMA.names)


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_NAME_DIGITS}d}"


def shard_paths(output: str, index: int) -> dict[str, str]:
    name = shard_name(index)
    folder = storage.join(output, SHARDS_FOLDER)
    return {
        "tar": storage.join(folder, f"{name}.tar"),
        "parquet": storage.join(folder, f"{name}.parquet"),
        "stats": storage.join(folder, f"{name}_stats.json"),
        "failures": storage.join(output, FAILURES_FOLDER, f"shard-{name}.parquet"),
    }


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
    for path in storage.glob(storage.join(output, SHARDS_FOLDER, "*_stats.json")):
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
    """(shard, stats) of a completed shard -> its samples' {key, shard, sha256, queries}."""

    def read(shard_and_stats):
        shard, stats = shard_and_stats
        if not stats.get("written"):
            return
        data = storage.read_bytes(shard_paths(output, shard)["parquet"])
        table = pq.read_table(io.BytesIO(data), columns=["sha256", "key", "queries"])
        for row in table.to_pylist():
            yield {**row, "shard": shard}

    return read


def sample_metadata(sample: dict) -> dict:
    return {field: sample[field] for field in METADATA_FIELDS}


def encode_tar(samples: list[dict]) -> bytes:
    from webdataset import TarWriter

    buffer = io.BytesIO()
    with TarWriter(buffer, user=TAR_OWNER, group=TAR_OWNER, mtime=TAR_MTIME, encoder=False) as tar:
        for sample in samples:
            metadata = sample_metadata(sample)
            tar.write({
                "__key__": sample["key"],
                "jpg": sample["jpg"],
                "txt": sample["caption"].encode("utf-8"),
                "json": json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8"),
            })
    return buffer.getvalue()


def encode_parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


class WriteShardFn(beam.DoFn):
    """(shard, {samples, failures, drops, plan}) -> the shard's stats dict.

    drops: (key, stage, reason, detail) verdicts reached after download (duplicate image,
    exact per-query cap) for samples of this shard.
    """

    def __init__(self, output: str):
        self._output = output

    def setup(self):
        self._shards = Metrics.counter("openwit", "shards.written")
        self._samples = Metrics.counter("openwit", "shards.samples")

    def process(self, shard_and_parts):
        shard, parts = shard_and_parts
        (plan,) = parts["plan"]
        drops = {key: (stage, reason, detail) for key, stage, reason, detail in parts["drops"]}
        written, failures = [], list(parts["failures"])
        for sample in sorted(parts["samples"], key=lambda s: s["key"]):
            if sample["key"] in drops:
                failures.append(failure(sample, *drops[sample["key"]]))
            else:
                written.append(sample)
        failures.sort(key=lambda f: (f["key"] or "", f["stage"]))
        paths = shard_paths(self._output, shard)

        tar_bytes = 0
        if written:
            tar = encode_tar(written)
            tar_bytes = len(tar)
            storage.write_bytes_atomic(paths["tar"], tar)
            storage.write_bytes_atomic(
                paths["parquet"], encode_parquet([sample_metadata(s) for s in written],
                                                 SAMPLE_SCHEMA)
            )
        else:
            storage.delete([paths["tar"], paths["parquet"]])  # left by an earlier, other plan
        storage.write_bytes_atomic(paths["failures"], encode_parquet(failures, FAILURE_SCHEMA))

        dropped: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for record in failures:
            dropped[record["stage"]][record["reason"]] += 1
        queries = collections.Counter(q for sample in written for q in sample["queries"])
        stats = {
            "shard": shard,
            "name": shard_name(shard),
            "plan": plan,
            "written": len(written),
            "tar_bytes": tar_bytes,
            "dropped": {stage: dict(sorted(c.items())) for stage, c in sorted(dropped.items())},
            "languages": dict(sorted(collections.Counter(s["language"] for s in written).items())),
            "queries": dict(sorted(queries.items())),
        }
        # The completion marker: written last, so a shard with stats is a whole shard.
        storage.write_json_atomic(paths["stats"], stats)
        LOGGER.info("shard %s written: %s samples, %s dropped", shard_name(shard),
                    f"{len(written):,}", f"{len(failures):,}")
        self._shards.inc()
        self._samples.inc(len(written))
        yield stats


class WriteShards(beam.PTransform):
    """Joins each shard's samples, failures and late drops and writes the shard."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, parts: dict):
        return (
            parts
            | "Join by shard" >> beam.CoGroupByKey()
            | "Write shard" >> beam.ParDo(WriteShardFn(self._output))
        )

