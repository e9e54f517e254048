"""`openwit build`: candidate lists -> a finished WebDataset corpus, as one Beam pipeline.

    read -> normalise -> match queries -> language -> dedup URLs -> per-query cap
         -> plan shards -> download + resize -> dedup images -> write shards -> summary

Every stage is a composite transform in its own module; this one only wires them together.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import storage
from pipeline.cap import CapPerQuery
from pipeline.config import BuildConfig, ConfigError, validate
from pipeline.dedup import DedupUrls, FindImageDuplicates
from pipeline.download import DownloadImages
from pipeline.language import FilterLanguage
from pipeline.match import MatchQueries
from pipeline.normalise import NormaliseCaptions
from pipeline.read import ReadCandidates
from pipeline.records import FAILURE_SCHEMA, Stage
from pipeline.shards import (
    FAILURES_FOLDER,
    PlanShards,
    WriteShards,
    read_completed_shards,
    read_written_hashes,
)
from pipeline.summary import REUSED_MARK, WriteSummary

LOGGER = logging.getLogger("openwit")
TEXT_FAILURES_PREFIX = "text"


class BuildCorpus(beam.PTransform):
    """The whole build. `completed_shards`: stats of shards an earlier run finished."""

    def __init__(self, config: BuildConfig, completed_shards: dict[int, dict] | None = None):
        super().__init__()
        self._config = config
        self._completed = completed_shards or {}

    def expand(self, pbegin):
        config = self._config
        output = config.shards.output

        read = pbegin | "Read candidates" >> ReadCandidates(config.read)
        normalised = read.kept | "Normalise captions" >> NormaliseCaptions(config.normalise)
        matched = normalised.kept | "Match queries" >> MatchQueries(config.match)
        in_language = matched.kept | "Filter language" >> FilterLanguage(config.language)
        unique = in_language.kept | "Dedup URLs" >> DedupUrls()
        capped = unique.kept | "Cap per query" >> CapPerQuery(config.cap)
        text_stages = {
            Stage.READ: read, Stage.NORMALISE: normalised, Stage.MATCH: matched,
            Stage.LANGUAGE: in_language, Stage.DEDUP_URL: unique, Stage.CAP: capped,
        }

        plan = capped.kept | "Plan shards" >> PlanShards(
            config.shards.samples_per_shard, self._completed
        )
        downloaded = plan.pending | "Download" >> DownloadImages(config.download)
        written_hashes = plan.reused | "Hashes of completed shards" >> beam.FlatMap(
            read_written_hashes(output)
        )
        duplicates = downloaded.kept | "Find duplicate images" >> FindImageDuplicates(
            written_hashes
        )
        new_shard_stats = {
            "samples": downloaded.kept,
            "failures": downloaded.failed,
            "duplicates": duplicates,
            "plan": plan.pending_plans,
        } | "Write shards" >> WriteShards(output)
        shard_stats = (
            new_shard_stats,
            plan.reused | "Completed shard stats" >> beam.MapTuple(
                lambda shard, stats: {**stats, REUSED_MARK: True}
            ),
        ) | "All shard stats" >> beam.Flatten()

        text_failures = (
            tuple(stage.failed for stage in text_stages.values())
            | "Text failures" >> beam.Flatten()
        )
        text_failures | "Write text failures" >> beam.io.WriteToParquet(
            storage.join(output, FAILURES_FOLDER, TEXT_FAILURES_PREFIX),
            FAILURE_SCHEMA,
            file_name_suffix=".parquet",
        )
        stage_kept = [
            stage.kept
            | f"Count {name}" >> beam.combiners.Count.Globally()
            | f"Label {name}" >> beam.Map(lambda n, name=name: (name, n))
            for name, stage in text_stages.items()
        ] | "Stage counts" >> beam.Flatten()

        return {
            "text_failures": text_failures,
            "summary": {
                "stage_kept": stage_kept,
                "text_failures": text_failures,
                "shard_stats": shard_stats,
                "num_shards": plan.num_shards,
                "matched": matched.kept,
                "kept": capped.kept,
            } | "Summary" >> WriteSummary(output, dataclasses.asdict(config)),
        }


def with_local_runner(options: PipelineOptions) -> PipelineOptions:
    """Beam's default runner first tries to download Prism; run locally unless told otherwise.

    The DirectRunner runs in memory unless --direct_running_mode says otherwise.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    return options


def check_inputs(config: BuildConfig) -> None:
    """Fail at launch, with the path in the message, rather than deep inside a worker."""
    for pattern in config.read.candidates:
        if not storage.glob(pattern):
            raise ConfigError(f"--candidates {pattern!r} matches no file")
    if config.match.queries is not None and not storage.glob(config.match.queries):
        raise ConfigError(f"--queries {config.match.queries!r} does not exist")


def prepare_output(config: BuildConfig) -> dict[int, dict]:
    """Clears what every run recomputes; returns the shards an earlier run completed."""
    output = config.shards.output
    stale_text_failures = storage.glob(
        storage.join(output, FAILURES_FOLDER, TEXT_FAILURES_PREFIX + "-*")
    )
    storage.delete(stale_text_failures)
    return read_completed_shards(output)


def build(config: BuildConfig, options: PipelineOptions) -> dict:
    """Runs the build pipeline to completion and returns the corpus stats."""
    # s3:// and gs:// take credentials and endpoints from the options, at launch too.
    FileSystems.set_options(options)
    validate(config)
    check_inputs(config)
    completed = prepare_output(config)
    if completed:
        LOGGER.info("output holds %d completed shards from an earlier run; they are kept if "
                    "this run plans them identically", len(completed))
    started = time.monotonic()
    with beam.Pipeline(options=with_local_runner(options)) as pipeline:
        pipeline | "Build corpus" >> BuildCorpus(config, completed)
    stats = storage.read_json(storage.join(config.shards.output, "stats.json"))
    stats["wall_seconds"] = round(time.monotonic() - started, 1)
    return stats


def run(argv: list[str] | None = None) -> dict:
    """`openwit build`'s entry: openwit's and Beam's flags together, as on the command line."""
    options = PipelineOptions(argv)
    return build(BuildConfig.from_options(options), options)
