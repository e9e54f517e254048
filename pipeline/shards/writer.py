"""Stage 11: write each shard once all of its samples, failures and late drops are known.

All of a shard's samples, failures and late drops (duplicate images, the exact cap) meet in
one CoGroupByKey; the samples are sorted by key and written as `NNNNNN.tar` (webdataset's
TarWriter, fixed mtime and owner, so reruns are byte-identical), `NNNNNN.parquet` (the same
metadata, one row per sample) and `NNNNNN_stats.json`, last, as the completion marker; the
shard's failures go to `failures/shard-NNNNNN.parquet`. Every file is written under a temporary
name and renamed into place. `encode_tar` is the one way openwit writes a tar (the demo's
unbalanced arm uses it too).
"""

from __future__ import annotations

import collections
import io
import json

import apache_beam as beam
from apache_beam.metrics import Metrics
from webdataset import TarWriter

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.layout import FAILURE_SCHEMA, SAMPLE_FIELDS, SAMPLE_SCHEMA, shard_name
from openwit.pipeline.core.progress import LOGGER
from openwit.pipeline.core.records import Reason, opt_out_directives

TAR_MTIME = 0  # a fixed timestamp: the same inputs give the same bytes on every rerun
TAR_OWNER = "openwit"


def sample_metadata(sample: dict) -> dict:
    return {field: sample[field] for field in SAMPLE_FIELDS}


def encode_tar(samples: list[dict]) -> bytes:
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


class WriteShardFn(beam.DoFn):
    """(shard, {samples, failures, drops, plan}) -> the shard's stats dict.

    drops: failure records (with the key only) of samples of this shard dropped after download
    (duplicate image, exact per-query cap); they get url and caption from the sample here.
    """

    def __init__(self, output: str):
        self._output = output

    def setup(self):
        self._shards = Metrics.counter("openwit", "shards.written")
        self._samples = Metrics.counter("openwit", "shards.samples")

    def process(self, shard_and_parts):
        shard, parts = shard_and_parts
        (plan,) = parts["plan"]
        drops = {record["key"]: record for record in parts["drops"]}
        written, failures = [], list(parts["failures"])
        for sample in sorted(parts["samples"], key=lambda s: s["key"]):
            if sample["key"] in drops:
                failures.append({**drops[sample["key"]], "url": sample["url"],
                                 "caption": sample["caption"]})
            else:
                written.append(sample)
        failures.sort(key=lambda f: (f["key"] or "", f["stage"]))
        paths = layout.shard_paths(self._output, shard)

        tar_bytes = 0
        if written:
            tar = encode_tar(written)
            tar_bytes = len(tar)
            storage.write_bytes_atomic(paths["tar"], tar)
            storage.write_bytes_atomic(
                paths["parquet"], storage.encode_parquet([sample_metadata(s) for s in written],
                                                 SAMPLE_SCHEMA)
            )
        else:
            storage.delete([paths["tar"], paths["parquet"]])  # left by an earlier, other plan
        storage.write_bytes_atomic(paths["failures"], storage.encode_parquet(failures, FAILURE_SCHEMA))

        dropped: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for record in failures:
            dropped[record["stage"]][record["reason"]] += 1
        queries = collections.Counter(q for sample in written for q in sample["queries"])
        # A candidate opted out by several directives counts under each.
        opt_outs = collections.Counter(
            directive for record in failures if record["reason"] == Reason.OPTED_OUT
            for directive in opt_out_directives(record["detail"] or ""))
        stats = {
            "shard": shard,
            "name": shard_name(shard),
            "plan": plan,
            "written": len(written),
            "tar_bytes": tar_bytes,
            "dropped": {stage: dict(sorted(c.items())) for stage, c in sorted(dropped.items())},
            "languages": dict(sorted(collections.Counter(s["language"] for s in written).items())),
            "queries": dict(sorted(queries.items())),
            "opted_out_by_directive": dict(sorted(opt_outs.items())),
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
