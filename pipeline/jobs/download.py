"""`openwit download`: the image half on what `openwit curate` wrote.

    curated.parquet/ -> [image half: jobs/image_half.py] -> shards/, stats.json,
                                                           query_counts.parquet, failures/
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.beam import DryRun, check_launch, run_pipeline, with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.layout import CURATED_FOLDER
from openwit.pipeline.core.records import Stage
from openwit.pipeline.images.config import ImageHalfConfig, image_half_config
from openwit.pipeline.jobs.curate import finish_stats, remove_leftovers
from openwit.pipeline.jobs.image_half import ImageHalf, excluded_images
from openwit.pipeline.jobs.rerun import INPUTS_FIELD, finished_stats, input_versions
from openwit.pipeline.shards.plan import read_completed_shards
from openwit.pipeline.text.config import DEFAULT_PER_QUERY_CAP


def read_curation(curated: str) -> tuple[list[dict], list[dict], dict]:
    """What `openwit curate` (or an earlier build/download) wrote: stage entries, query rows
    and the balance settings."""
    stats_path = storage.join(curated, layout.STATS_FILE)
    if not storage.exists(stats_path):
        raise ConfigError(f"--curated {curated!r} holds no {layout.STATS_FILE}; run "
                          "`openwit curate` into it first")
    stats = storage.read_json(stats_path)
    entries = [e for e in stats["stages"] if e["stage"] in Stage.TEXT]
    table = storage.read_parquet(storage.join(curated, layout.QUERY_COUNTS_FILE),
                                 columns=layout.CURATED_QUERY_COUNTS_SCHEMA.names)
    return entries, table.to_pylist(), stats["balance"]


def download(config: ImageHalfConfig, curated: str, options: PipelineOptions) -> dict | DryRun:
    """Runs the image half on a curated folder and returns the corpus stats; in a dry run,
    translates the graph and touches no storage."""
    FileSystems.set_options(options)
    config.validate()
    dry_run = check_launch(options, {"--curated": [curated],
                                     "--output": [config.shards.output]})
    run_config = {**dataclasses.asdict(config), "curated": curated}
    if dry_run:
        return run_pipeline(download_graph(config, curated, run_config, options, {},
                                           excluded_images(config)))
    output = config.shards.output
    with storage.at_launch():
        _, _, balance = read_curation(curated)
        if not storage.glob(curated_parts(curated)):
            raise ConfigError(f"--curated {curated!r} holds no {CURATED_FOLDER}/*.parquet")
        storage.check_writable(output)
        inputs = input_versions([curated_parts(curated)], list(config.dedup.exclude_images))
        finished = finished_stats(output, run_config, inputs)
        if finished is not None:
            return finished
        excluded = excluded_images(config)
        remove_leftovers(output)
        completed = read_completed_shards(output)
    started = time.monotonic()
    if (launched_later := run_pipeline(download_graph(config, curated, run_config, options, completed, excluded))) is not None:
        return launched_later  # a template: the job runs after this process
    with storage.at_launch():
        return finish_stats(output, started, {"balance": balance, INPUTS_FIELD: inputs})


def curated_parts(curated: str) -> str:
    return storage.join(curated, CURATED_FOLDER, "*.parquet")


def download_graph(config: ImageHalfConfig, curated: str, run_config: dict,
                   options: PipelineOptions, completed: dict[int, dict],
                   excluded) -> beam.Pipeline:
    """The curated rows, the curate stages' counts and the query counts are read by the
    workers (a 500k-query table does not belong in the job's graph); `validate=False`: the
    launcher has listed the parts already, or, in a dry run, must not."""
    pipeline = beam.Pipeline(options=with_local_runner(options))
    curated_rows = pipeline | "Read curated" >> beam.io.ReadFromParquet(
        curated_parts(curated), validate=False)
    curation = (pipeline | "Curated folder" >> beam.Create([curated])
                | "Read curation" >> beam.Map(read_curation))
    {
        "curated": curated_rows,
        "text_entries": curation | "Curate stages" >> beam.MapTuple(
            lambda entries, _query_rows, _balance: {"stages": entries, "problems": []}),
        "query_rows": curation | "Curated query counts" >> beam.FlatMapTuple(
            lambda _entries, query_rows, _balance: query_rows),
    } | "Image half" >> ImageHalf(config, run_config, completed, excluded)
    return pipeline


def download_job_config(args: argparse.Namespace,
                        dry_run: bool = False) -> tuple[ImageHalfConfig, str]:
    """`openwit download`'s parsed flags -> (its config, the curated folder). The cap defaults
    to the one curation balanced for, so the curated folder is read here, except in a dry run,
    which reads nothing: there the curate stage's default cap stands in (the graph's shape does
    not depend on it)."""
    if not args.curated:
        raise ConfigError("--curated is required (the output folder of `openwit curate`)")
    curated = args.curated.rstrip("/")
    if dry_run:
        return image_half_config(args, default_cap=DEFAULT_PER_QUERY_CAP), curated
    with storage.at_launch():
        _, _, balance = read_curation(curated)
    return image_half_config(args, default_cap=balance["per_query_cap"]), curated
