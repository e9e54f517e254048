"""`openwit build`: the text half and the image half in one pipeline, into one output folder.

    candidate lists -> [text half: jobs/text_half.py] -> [image half: jobs/image_half.py]
                    -> shards/, stats.json, query_counts.parquet, failures/

With crawl files (`--wat` / `--warc`) instead of lists, `jobs/candidates.py` extracts their
candidates into OUTPUT/candidates/ first (a job of its own, which a rerun finds finished), and
the build reads those.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.beam import DryRun, check_launch, run_pipeline, with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_output_flag
from openwit.pipeline.crawl.config import CrawlConfig, add_crawl_input_flags, crawl_config, crawl_inputs
from openwit.pipeline.images.config import ImageHalfConfig, add_download_stage_flags, image_half_config
from openwit.pipeline.jobs.curate import (
    check_inputs,
    clear_text_outputs,
    clear_work_folder,
    finish_stats,
    remove_leftovers,
)
from openwit.pipeline.jobs.candidates import (
    CRAWL_SUMMARY,
    extract_candidates,
    format_candidates_summary,
)
from openwit.pipeline.jobs.image_half import ImageHalf, excluded_images
from openwit.pipeline.jobs.rerun import INPUTS_FIELD, finished_stats, input_versions
from openwit.pipeline.jobs.text_half import CurateCandidates, write_failures
from openwit.pipeline.shards.plan import read_completed_shards
from openwit.pipeline.text.config import CurateConfig, add_input_flags, add_text_flags, curate_config
from openwit.pipeline.text.steps import unbatch

LOGGER = logging.getLogger("openwit")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """`openwit build`: the text half and the image half, into one output folder."""

    curate: CurateConfig
    images: ImageHalfConfig
    crawl: CrawlConfig | None = None  # `--wat` / `--warc`: extracted first, then read

    def validate(self) -> None:
        self.curate.validate()
        self.images.validate()


def add_build_flags(parser: argparse.ArgumentParser) -> None:
    """`openwit build`'s flags: curate's and download's (the cap is the text stages')."""
    add_output_flag(parser.add_argument_group("output"),
                    help="output folder (local or s3:// / gs://)")
    add_input_flags(parser)
    add_crawl_input_flags(parser.add_argument_group(
        "or crawl files (instead of --candidates: their candidates go to OUTPUT/candidates)"),
        required=False)
    add_text_flags(parser)
    add_download_stage_flags(parser)


def build_config(args: argparse.Namespace) -> BuildConfig:
    crawl, candidates = None, None
    if crawl_inputs(args) is not None:
        if args.candidates:
            raise ConfigError("give --candidates or crawl files (--wat / --warc), not both")
        if not args.output:
            raise ConfigError("--output is required")
        crawl = crawl_config(args, output=storage.join(args.output.rstrip("/"),
                                                       layout.CANDIDATES_FOLDER))
        candidates = (layout.candidates_pattern(crawl.output),)
    curate = curate_config(args, candidates)
    return BuildConfig(curate=curate,
                       images=image_half_config(args, default_cap=curate.balance.per_query_cap),
                       crawl=crawl)


class BuildCorpus(beam.PTransform):
    """The whole build: the text half, then the image half, in one pipeline."""

    def __init__(self, config: BuildConfig, completed_shards: dict[int, dict] | None = None,
                 excluded=None):
        super().__init__()
        self._config = config
        self._completed = completed_shards or {}
        self._excluded = excluded

    def expand(self, pbegin):
        config = self._config
        curated = pbegin | "Curate" >> CurateCandidates(config.curate)
        write_failures(curated.failures, config.images.shards.output)
        return {
            "curated": unbatch(curated.curated, "Curated candidates"),
            "text_entries": curated.stage_entries,
            "query_rows": curated.query_rows,
        } | "Image half" >> ImageHalf(config.images, build_run_config(config), self._completed,
                                           self._excluded)


def build_run_config(config: BuildConfig) -> dict:
    return {**dataclasses.asdict(config.curate), **dataclasses.asdict(config.images)}


def build_inputs(config: BuildConfig) -> list[dict]:
    """What the build reads, with versions: a rerun over unchanged inputs has nothing to do."""
    queries = [config.curate.match.queries] if config.curate.match.queries else []
    return input_versions([*config.curate.read.candidates, *queries],
                          list(config.images.dedup.exclude_images))


def prepare_output(output: str) -> dict[int, dict]:
    """Removes what a killed run left and what every run recomputes; returns the shards an
    earlier run completed."""
    remove_leftovers(output)
    clear_text_outputs(output)
    completed = read_completed_shards(output)
    if completed:
        LOGGER.info("output holds %d completed shards from an earlier run; they are kept if "
                    "this run plans them identically", len(completed))
    return completed


def build_paths(config: BuildConfig) -> dict[str, list[str]]:
    """What the workers read and write, by the flag that named it."""
    inputs = ({f"--{config.crawl.mode}": list(config.crawl.inputs)} if config.crawl is not None
              else {"--candidates": list(config.curate.read.candidates)})
    return {**inputs, "--queries": [config.curate.match.queries or ""],
            "--output": [config.images.shards.output]}


def build(config: BuildConfig, options: PipelineOptions) -> dict | DryRun:
    """Runs both halves as one pipeline and returns the corpus stats; in a dry run, translates
    the graph and touches no storage (no input listed, nothing cleared or read back)."""
    # s3:// and gs:// take credentials and endpoints from the options, at launch too.
    FileSystems.set_options(options)
    config.validate()
    dry_run = check_launch(options, build_paths(config))
    if config.crawl is not None and options.view_as(GoogleCloudOptions).template_location:
        raise ConfigError("a build from crawl files is two jobs, and a template holds one: "
                          "run `openwit candidates`, then `openwit build --candidates`")
    if dry_run:
        if config.crawl is not None:
            LOGGER.info("crawl: %s", extract_candidates(config.crawl, options).summary())
        return run_pipeline(build_graph(config, options, {}, excluded_images(config.images)))
    crawl_stats = None
    if config.crawl is not None:
        crawl_stats = extract_candidates(config.crawl, options)
        for line in format_candidates_summary(crawl_stats).splitlines():
            LOGGER.info("crawl: %s", line)
        if not crawl_stats["candidates"]:
            raise ConfigError(f"the crawl files hold no image link with alt text "
                              f"(see {storage.join(config.crawl.output, layout.STATS_FILE)})")
    output = config.images.shards.output
    with storage.at_launch():
        check_inputs(config.curate)
        storage.check_writable(output)
        inputs = build_inputs(config)
        finished = finished_stats(output, build_run_config(config), inputs)
        if finished is not None:
            return finished
        excluded = excluded_images(config.images)
        completed = prepare_output(output)
    started = time.monotonic()
    if (launched_later := run_pipeline(build_graph(config, options, completed, excluded))) is not None:
        return launched_later  # a template: the job runs after this process
    balance = dataclasses.asdict(config.curate.balance)
    extra = {"balance": {**balance, "target": config.curate.balance.target},
             INPUTS_FIELD: inputs}
    if crawl_stats is not None:
        extra["crawl"] = {name: crawl_stats[name] for name in CRAWL_SUMMARY}
    with storage.at_launch():
        clear_work_folder(output)
        return finish_stats(output, started, extra)


def build_graph(config: BuildConfig, options: PipelineOptions, completed: dict[int, dict],
                excluded) -> beam.Pipeline:
    pipeline = beam.Pipeline(options=with_local_runner(options))
    pipeline | "Build corpus" >> BuildCorpus(config, completed, excluded)
    return pipeline
