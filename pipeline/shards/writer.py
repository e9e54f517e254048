"""Stage 8½, staging the downloaded images, and stage 12, writing each shard once all of its
samples, failures and late drops are known.

`StageImages` writes the images to `_staged/` where they were downloaded, so that only the
samples' metadata crosses the shuffles. All of a shard's samples, failures and late drops
(duplicate images, the exact cap) meet in one CoGroupByKey; the writer reads the shard's
staged images back, sorts the samples by key and writes `NNNNNN.tar` (a webdataset tar
streamed to its file, with fixed mtime and owner, so reruns are byte-identical),
`NNNNNN.parquet` (the same metadata, one row per sample) and `NNNNNN_stats.json`, last, as
the completion marker; the shard's failures go to `failures/shard-NNNNNN.parquet`. Every file
is written under a temporary name and renamed into place. `write_tar` is the one way openwit
writes a tar (`encode_tar` for bytes in memory; the demo's unbalanced arm uses it too)."""

from __future__ import annotations

import collections
import io
import json
import tarfile
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.layout import FAILURE_SCHEMA, SAMPLE_FIELDS, SAMPLE_SCHEMA, shard_name
from openwit.pipeline.core.progress import LOGGER
from openwit.pipeline.core.records import Reason, in_global_window, opt_out_directives

TAR_MTIME = 0  # a fixed timestamp: the same inputs give the same bytes on every rerun
TAR_OWNER = "openwit"
TAR_MODE = 0o444


def sample_metadata(sample: dict) -> dict:
    return {field: sample[field] for field in SAMPLE_FIELDS}


def _json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")


def sample_members(sample: dict) -> dict[str, bytes]:
    """A shard's members of one sample: the image, its metadata, its caption."""
    return {"jpg": sample["jpg"], "json": _json(sample_metadata(sample)),
            "txt": sample["caption"].encode("utf-8")}


def image_only(sample: dict) -> dict[str, bytes]:
    """A staged file's member of one sample."""
    return {"jpg": sample["jpg"]}


def removed_members(removed: dict) -> dict[str, bytes]:
    """A removed-examples file's members: the image and the failure record."""
    return {"jpg": removed["jpg"], "json": _json(removed["record"])}


def write_tar(samples, stream, members=sample_members) -> None:
    """Samples as a webdataset tar on `stream`, written as they come: for each sample in
    order, its `members` (KEY.jpg, KEY.json, KEY.txt for a shard; adjacent, sorted by
    extension), USTAR headers, mode 0444, a fixed owner and mtime, so the same samples give
    the same bytes."""
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for extension, data in members(sample).items():
                info = tarfile.TarInfo(f"{sample['key']}.{extension}")
                info.size, info.mtime, info.mode = len(data), TAR_MTIME, TAR_MODE
                info.uname = info.gname = TAR_OWNER
                tar.addfile(info, io.BytesIO(data))


def encode_tar(samples: list[dict]) -> bytes:
    buffer = io.BytesIO()
    write_tar(samples, buffer)
    return buffer.getvalue()


# Removed samples whose images the report shows beside the kept one.
REMOVED_SHOWN = (Reason.NEAR_DUPLICATE, Reason.EVAL_DUPLICATE)
STAGED_FIELD = "staged"  # a sample's jpg waits in this file (see StageImages)
STAGE_FLUSH_BYTES = 64 * 1024 * 1024  # one bundle's images held per shard before a file


class StageImages(beam.DoFn):
    """(shard, sample with its jpg) -> (shard, sample without it, naming the file it is in).

    The image bytes go to storage here, in the worker that downloaded them, as tars of up to
    STAGE_FLUSH_BYTES per (shard, bundle); only the samples' metadata travels on to dedup,
    the cap and the shard writer. A runner copies every element it shuffles several times
    over (the local runners' in-memory and gRPC data planes alike), and a corpus's images
    are nearly all of its bytes. A retried bundle writes files of its own (each name has a
    random part); the writer reads only the files its samples name and deletes the rest.
    """

    def __init__(self, output: str):
        self._output = output

    def start_bundle(self):
        self._pending: dict[int, list[dict]] = {}
        self._pending_bytes: dict[int, int] = {}

    def process(self, shard_and_sample):
        shard, sample = shard_and_sample
        self._pending.setdefault(shard, []).append(sample)
        self._pending_bytes[shard] = self._pending_bytes.get(shard, 0) + len(sample["jpg"])
        if self._pending_bytes[shard] >= STAGE_FLUSH_BYTES:
            yield from self._flush(shard)

    def finish_bundle(self):
        for shard in list(self._pending):
            for output in self._flush(shard):
                yield in_global_window(output)

    def _flush(self, shard):
        samples = self._pending.pop(shard)
        del self._pending_bytes[shard]
        path = layout.staged_path(self._output, shard, uuid.uuid4().hex)
        with storage.create_atomic(path) as stream:
            write_tar(samples, stream, image_only)
        for sample in samples:
            light = {k: v for k, v in sample.items() if k != "jpg"}
            light[STAGED_FIELD] = path
            yield shard, light


def read_staged_images(paths, keys: set[str]) -> dict[str, bytes]:
    """key -> jpg for `keys`, from the staged tars at `paths` (read in memory)."""
    images = {}
    for path in sorted(paths):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(path)), mode="r:") as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if extension == "jpg" and key in keys and member.isfile():
                    images[key] = tar.extractfile(member).read()
    return images


class _CountingWriter(io.RawIOBase):
    """Passes writes on to a stream and counts their bytes (the tar's size, for the stats)."""

    def __init__(self, stream):
        super().__init__()
        self._stream, self.written = stream, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._stream.write(data)
        self.written += len(data)
        return len(data)


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
                                 "caption": sample["caption"], "phash": sample.get("phash"),
                                 "phash_crops": sample.get("phash_crops"),
                                 "colours": sample.get("colours")})
            else:
                written.append(sample)
        failures.sort(key=lambda f: (f["key"] or "", f["stage"]))
        paths = layout.shard_paths(self._output, shard)
        examples = [f for f in failures if f["reason"] in REMOVED_SHOWN][:layout.REMOVED_EXAMPLES]
        staged_samples = [s for s in parts["samples"] if STAGED_FIELD in s]
        if staged_samples:
            wanted = {s["key"] for s in written} | {f["key"] for f in examples}
            images = read_staged_images({s[STAGED_FIELD] for s in staged_samples}, wanted)
            written = [{**s, "jpg": images[s["key"]]} if STAGED_FIELD in s else s
                       for s in written]
        else:
            images = {s["key"]: s["jpg"] for s in parts["samples"] if "jpg" in s}
        self._write_removed_examples(paths["removed"], examples, images)

        tar_bytes = 0
        if written:
            with storage.create_atomic(paths["tar"]) as stream:
                counted = _CountingWriter(stream)
                write_tar(written, counted)
                tar_bytes = counted.written
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
        # Every staged file of this shard: its samples', and any a failed bundle attempt left.
        storage.delete(storage.glob(layout.staged_pattern(self._output, shard)))
        LOGGER.info("shard %s written: %s samples, %s dropped", shard_name(shard),
                    f"{len(written):,}", f"{len(failures):,}")
        self._shards.inc()
        self._samples.inc(len(written))
        yield stats


    @staticmethod
    def _write_removed_examples(path: str, examples: list[dict], images: dict) -> None:
        """A few removed near and evaluation duplicates, image and failure record, for the
        report to show beside what was kept."""
        shown = [{"key": f["key"], "jpg": images[f["key"]], "record": f}
                 for f in examples if f["key"] in images]
        if not shown:
            storage.delete([path])  # left by an earlier, other plan
            return
        with storage.create_atomic(path) as stream:
            write_tar(shown, stream, removed_members)


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
