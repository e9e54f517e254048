"""The image half (stages 7-12): curated candidates -> a finished WebDataset corpus.

    curated -> plan shards -> download + resize -> stage images -> identical images
            -> near-duplicates and evaluation images -> exact cap -> write shards
            -> summary (stats.json, query_counts.parquet, sizes.json)

`ImageHalf` is the half as one composite transform; `openwit download` (jobs/download.py) runs
it on what `openwit curate` wrote, `openwit build` (jobs/build.py) after the text half in the
same pipeline. Every stage is a composite transform in its own module; this one wires them.
"""

from __future__ import annotations

import apache_beam as beam

from openwit.pipeline.images.cap import ExactCap
from openwit.pipeline.images.config import ImageHalfConfig
from openwit.pipeline.images.download import DownloadImages
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.records import colours_of, hashes_of
from openwit.pipeline.images.eval_set import HashList, hash_paths
from openwit.pipeline.images.image_dedup import FindImageDuplicates
from openwit.pipeline.images.image_hash import is_colour, is_hash
from openwit.pipeline.images.near_dedup import FindNearDuplicates
from openwit.pipeline.shards.plan import PlanShards, read_grouped_drops, read_written_samples
from openwit.pipeline.shards.summary import REUSED_MARK, WriteSummary
from openwit.pipeline.shards.writer import StageImages, WriteShards


def _light(shard_and_sample):
    shard, sample = shard_and_sample
    return {"key": sample["key"], "shard": shard, "queries": sample["queries"],
            "hashes": hashes_of(sample), "colours": colours_of(sample), "new": True}


def _colours_of_views(node):
    """A completed sample's colours, when it has one valid colour per hash; otherwise None
    (recorded by an openwit that kept none, or with other views: compared by hash alone)."""
    key, shard, hashes, colours = node
    if colours is None or len(colours) != len(hashes) or not all(map(is_colour, colours)):
        colours = None
    return key, shard, hashes, colours


def _unless_dropped(key, parts):
    if not parts["dropped"]:
        yield from parts["sample"]


class _Without(beam.PTransform):
    """Light sample records -> those whose key has no failure record in `drops`."""

    def __init__(self, drops):
        super().__init__()
        self._drops = drops

    def expand(self, samples):
        return (
            {
                "sample": samples | "By key" >> beam.Map(lambda s: (s["key"], s)),
                "dropped": self._drops | "Dropped keys" >> beam.Map(
                    lambda kv: (kv[1]["key"], True)),
            }
            | "Join" >> beam.CoGroupByKey()
            | "Not dropped" >> beam.FlatMapTuple(_unless_dropped)
        )


def excluded_images(config: ImageHalfConfig) -> HashList | None:
    """The hashes of `--exclude-images`, made on the launcher before the pipeline starts (a
    bad path is the user's one-line error, not a failed pipeline)."""
    if not config.dedup.exclude_images:
        return None
    try:
        return hash_paths(config.dedup.exclude_images, config.download.hasher)
    except ConfigError as err:
        raise ConfigError(f"--exclude-images: {err}") from None


class ImageHalf(beam.PTransform):
    """{curated, text_entries, query_rows} -> the corpus stats (a singleton).

    curated: candidate dicts as curation leaves them; text_entries: a singleton list of the
    curate stages' entries; query_rows: {query_id, query, matched, kept} per query.
    `completed_shards`: stats of shards an earlier run finished in the same output.
    """

    def __init__(self, config: ImageHalfConfig, run_config: dict,
                 completed_shards: dict[int, dict] | None = None,
                 excluded: HashList | None = None):
        super().__init__()
        self._config = config
        self._run_config = run_config
        self._completed = completed_shards or {}
        self._excluded = excluded

    def _eval_hashes(self, pipeline):
        """The evaluation set's (hash, source) pairs, and what the summary says of them."""
        hashes = self._excluded
        if hashes is None:
            return None, {}
        said = {"excluded_images": {"hashed": len(hashes.hashes),
                                    "unreadable": len(hashes.unreadable),
                                    "unreadable_examples": hashes.unreadable[:20]}}
        return pipeline | "Evaluation hashes" >> beam.Create(hashes.hashes, reshuffle=False), said

    def expand(self, inputs: dict):
        config = self._config
        output = config.shards.output
        eval_hashes, said = self._eval_hashes(inputs["curated"].pipeline)
        plan = inputs["curated"] | "Plan shards" >> PlanShards(
            config.shards.samples_per_shard, self._completed
        )
        downloaded = plan.pending | "Download" >> DownloadImages(config.download)
        staged = downloaded.kept | "Stage images" >> beam.ParDo(StageImages(output))
        written = plan.reused | "Samples of completed shards" >> beam.FlatMap(
            read_written_samples(output)
        )
        duplicates = staged | "Find duplicate images" >> FindImageDuplicates(
            written | "Hashes of completed shards" >> beam.Map(
                lambda s: (s["sha256"], s["key"], s["shard"]))
        )
        distinct = (staged | "Key, queries, hash" >> beam.Map(_light)
                    | "Without duplicates" >> _Without(duplicates))
        hex_length = config.download.hasher.hex_length
        completed_nodes = (
            (written | "Nodes of completed shards" >> beam.Map(
                lambda s: (s["key"], s["shard"], hashes_of(s), colours_of(s))),
             plan.reused | "Grouped drops of completed shards" >> beam.FlatMap(
                read_grouped_drops(output)))
            | "Completed nodes" >> beam.Flatten()
            | "Of this hash" >> beam.Filter(
                lambda node: all(is_hash(value, hex_length) for value in node[2]))
            | "Colours of their views" >> beam.Map(_colours_of_views)
        )
        near_duplicates = (
            distinct
            | "Node of each" >> beam.Map(
                lambda s: (s["key"], s["shard"], s["hashes"], s["colours"]))
            | "Find near-duplicates" >> FindNearDuplicates(
                config.dedup, config.download.hasher.bits, written=completed_nodes,
                eval_hashes=eval_hashes)
        )
        survivors = distinct | "Without near-duplicates" >> _Without(near_duplicates)
        completed_survivors = written | "Completed samples" >> beam.Map(
            lambda s: {"key": s["key"], "shard": s["shard"], "queries": s["queries"],
                       "new": False})
        over_cap = (
            (survivors, completed_survivors)
            | "Every survivor" >> beam.Flatten()
            | "Exact cap" >> ExactCap(config.cap)
        )
        drops = (duplicates, near_duplicates, over_cap) | "Late drops" >> beam.Flatten()
        new_shard_stats = {
            "samples": staged,
            "failures": downloaded.failed,
            "drops": drops,
            "plan": plan.pending_plans,
        } | "Write shards" >> WriteShards(output)
        shard_stats = (
            new_shard_stats,
            plan.reused | "Completed shard stats" >> beam.MapTuple(
                lambda shard, stats: {**stats, REUSED_MARK: True}
            ),
        ) | "All shard stats" >> beam.Flatten()
        return {
            "text_entries": inputs["text_entries"],
            "shard_stats": shard_stats,
            "num_shards": plan.num_shards,
            "query_rows": inputs["query_rows"],
        } | "Summary" >> WriteSummary(output, {**self._run_config, **said})
