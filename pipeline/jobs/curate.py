"""`openwit curate`: the text half as a job of its own.

    candidate lists -> [text half: jobs/text_half.py] -> curated.parquet/, query_counts.parquet,
                                                        failures/text-*.parquet, stats.json

`openwit download --curated DIR` (jobs/download.py) continues from what it writes.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.beam import DryRun, check_launch, run_pipeline, with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.layout import (
    CURATED_FOLDER,
    CURATED_PREFIX,
    FAILURES_FOLDER,
    TEXT_FAILURES_PREFIX,
    WORK_FOLDER,
)
from openwit.pipeline.jobs.text_half import CurateCandidates, WriteCurated
from openwit.pipeline.shards.summary import format_stage_table
from openwit.pipeline.text.config import CurateConfig

LOGGER = logging.getLogger("openwit")


def check_inputs(config: CurateConfig) -> None:
    """Fail at launch, with the path in the message, rather than deep inside a worker."""
    for pattern in config.read.candidates:
        if not storage.glob(pattern):
            raise ConfigError(f"--candidates {pattern!r} matches no file")
    if config.match.queries is not None and not storage.glob(config.match.queries):
        raise ConfigError(f"--queries {config.match.queries!r} does not exist")


def remove_leftovers(output: str) -> None:
    """What a killed run left: temporary files, and on s3:// its unfinished uploads."""
    removed = storage.remove_leftovers(output)
    if removed:
        LOGGER.info("removed %d temporary files or unfinished uploads an earlier run left",
                    removed)


def clear_text_outputs(output: str) -> None:
    """Removes what every run writes anew (Beam's part files would otherwise pile up)."""
    storage.delete(
        storage.glob(storage.join(output, CURATED_FOLDER, CURATED_PREFIX + "-*"))
        + storage.glob(storage.join(output, FAILURES_FOLDER, TEXT_FAILURES_PREFIX + "-*"))
    )
    clear_work_folder(output)


def clear_work_folder(output: str, folder: str = WORK_FOLDER) -> None:
    storage.delete(storage.glob(storage.join(output, folder, "*")))
    work = storage.join(output, folder)
    # A local or gs:// folder may stay behind empty; S3 has no folders.
    if not storage.is_s3(work) and storage.exists(work) and not storage.glob(
            storage.join(work, "*")):
        storage.delete([work])


def curate(config: CurateConfig, options: PipelineOptions) -> dict | DryRun:
    """Runs the curate pipeline to completion and returns its stats; in a dry run, translates
    the graph and touches no storage."""
    FileSystems.set_options(options)
    config.validate()
    dry_run = check_launch(options, {"--candidates": list(config.read.candidates),
                                     "--queries": [config.match.queries or ""],
                                     "--output": [config.output]})
    if dry_run:
        return run_pipeline(curate_graph(config, options))
    with storage.at_launch():
        check_inputs(config)
        storage.check_writable(config.output)
        remove_leftovers(config.output)
        clear_text_outputs(config.output)
    started = time.monotonic()
    if (launched_later := run_pipeline(curate_graph(config, options))) is not None:
        return launched_later  # a template: the job runs after this process
    with storage.at_launch():
        clear_work_folder(config.output)
        return finish_stats(config.output, started)


def curate_graph(config: CurateConfig, options: PipelineOptions) -> beam.Pipeline:
    pipeline = beam.Pipeline(options=with_local_runner(options))
    result = pipeline | "Curate" >> CurateCandidates(config)
    result | "Write" >> WriteCurated(config)
    return pipeline


def finish_stats(output: str, started: float, extra: dict | None = None) -> dict:
    """Adds the wall time (and `extra`) to the stats.json the job wrote, and returns it.
    Staged images every shard writer has taken are gone by now: their folder goes too."""
    clear_work_folder(output, layout.STAGED_FOLDER)
    stats_path = storage.join(output, layout.STATS_FILE)
    stats = storage.read_json(stats_path)
    stats.update(extra or {})
    stats["wall_seconds"] = round(time.monotonic() - started, 1)
    storage.write_json_atomic(stats_path, stats)
    return stats


def format_curate_summary(stats: dict) -> str:
    lines = format_stage_table(stats["stages"])
    queries, balance = stats["queries"], stats["balance"]
    output = stats["config"]["output"]
    lines += [
        "",
        f"{stats['curated']:,} of {stats['input_rows']:,} candidates curated to "
        f"{output}/{CURATED_FOLDER}",
        f"queries: {queries['matched']:,} matched, {queries['kept']:,} kept; balanced to "
        f"{balance['target']:,.0f} per query (cap {balance['per_query_cap']:,} x oversample "
        f"{balance['oversample']:g}); see query_counts.parquet",
    ]
    if stats.get("accounting_problems"):
        lines.append("ACCOUNTING PROBLEMS: " + "; ".join(stats["accounting_problems"]))
    if "wall_seconds" in stats:
        lines.append(f"wall time {stats['wall_seconds']:.1f} s")
    return "\n".join(lines)
