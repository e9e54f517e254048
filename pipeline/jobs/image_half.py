"""The image half (stages 7-11): curated candidates -> a finished WebDataset corpus.

    curated -> plan shards -> download + resize -> stage images -> dedup images -> exact cap
            -> write shards
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
from openwit.pipeline.images.image_dedup import FindImageDuplicates
from openwit.pipeline.shards.plan import PlanShards, read_written_samples
from openwit.pipeline.shards.summary import REUSED_MARK, WriteSummary
from openwit.pipeline.shards.writer import StageImages, WriteShards


def _light(shard_and_sample):
    shard, sample = shard_and_sample
    return sample["key"], {"key": sample["key"], "shard": shard, "queries": sample["queries"],
                           "new": True}


def _unless_duplicate(key, parts):
    if not parts["duplicate"]:
        yield from parts["sample"]


class ImageHalf(beam.PTransform):
    """{curated, text_entries, query_rows} -> the corpus stats (a singleton).

    curated: candidate dicts as curation leaves them; text_entries: a singleton list of the
    curate stages' entries; query_rows: {query_id, query, matched, kept} per query.
    `completed_shards`: stats of shards an earlier run finished in the same output.
    """

    def __init__(self, config: ImageHalfConfig, run_config: dict,
                 completed_shards: dict[int, dict] | None = None):
        super().__init__()
        self._config = config
        self._run_config = run_config
        self._completed = completed_shards or {}

    def expand(self, inputs: dict):
        config = self._config
        output = config.shards.output
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
        survivors = (
            {
                "sample": staged | "Key and queries" >> beam.Map(_light),
                "duplicate": duplicates | "Loser keys" >> beam.Map(lambda kv: (kv[1]["key"], True)),
            }
            | "Join duplicates" >> beam.CoGroupByKey()
            | "Not duplicates" >> beam.FlatMapTuple(_unless_duplicate)
        )
        completed_survivors = written | "Completed samples" >> beam.Map(
            lambda s: {"key": s["key"], "shard": s["shard"], "queries": s["queries"],
                       "new": False})
        over_cap = (
            (survivors, completed_survivors)
            | "Every survivor" >> beam.Flatten()
            | "Exact cap" >> ExactCap(config.cap)
        )
        drops = (duplicates, over_cap) | "Late drops" >> beam.Flatten()
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
        } | "Summary" >> WriteSummary(output, self._run_config)
