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
from openwit.pipeline.core.beam import with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.layout import CURATED_FOLDER
from openwit.pipeline.core.records import Stage
from openwit.pipeline.images.config import ImageHalfConfig, image_half_config
from openwit.pipeline.jobs.curate import finish_stats, remove_leftovers
from openwit.pipeline.jobs.image_half import ImageHalf, excluded_images
from openwit.pipeline.jobs.rerun import INPUTS_FIELD, finished_stats, input_versions
from openwit.pipeline.shards.plan import read_completed_shards


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


def download(config: ImageHalfConfig, curated: str, options: PipelineOptions) -> dict:
    """Runs the image half on a curated folder and returns the corpus stats."""
    FileSystems.set_options(options)
    config.validate()
    entries, query_rows, balance = read_curation(curated)
    parts = storage.glob(storage.join(curated, CURATED_FOLDER, "*.parquet"))
    if not parts:
        raise ConfigError(f"--curated {curated!r} holds no {CURATED_FOLDER}/*.parquet")
    output = config.shards.output
    storage.check_writable(output)
    run_config = {**dataclasses.asdict(config), "curated": curated}
    inputs = input_versions([storage.join(curated, CURATED_FOLDER, "*.parquet")],
                            list(config.dedup.exclude_images))
    finished = finished_stats(output, run_config, inputs)
    if finished is not None:
        return finished
    excluded = excluded_images(config)
    remove_leftovers(output)
    completed = read_completed_shards(output)
    started = time.monotonic()
    with beam.Pipeline(options=with_local_runner(options)) as pipeline:
        curated_rows = pipeline | "Read curated" >> beam.io.ReadFromParquet(
            storage.join(curated, CURATED_FOLDER, "*.parquet"))
        {
            "curated": curated_rows,
            "text_entries": pipeline | "Curate stages" >> beam.Create(
                [{"stages": entries, "problems": []}]),
            "query_rows": pipeline | "Curated query counts" >> beam.Create(query_rows),
        } | "Image half" >> ImageHalf(config, run_config, completed, excluded)
    return finish_stats(output, started, {"balance": balance, INPUTS_FIELD: inputs})


def download_job_config(args: argparse.Namespace) -> tuple[ImageHalfConfig, str]:
    """`openwit download`'s parsed flags -> (its config, the curated folder). The cap defaults
    to the one curation balanced for, so the curated folder is read here."""
    if not args.curated:
        raise ConfigError("--curated is required (the output folder of `openwit curate`)")
    curated = args.curated.rstrip("/")
    _, _, balance = read_curation(curated)
    return image_half_config(args, default_cap=balance["per_query_cap"]), curated
