"""`openwit candidates`: crawl files (WAT or WARC) -> candidate parquet files that
`openwit curate` and `openwit build` read as `--candidates`, and stats.json with every count.

The candidate files are rewritten by each run (their names hash their rows, so a rerun over
the same files writes the same names); a rerun over unchanged crawl files with the same
settings ends at once (`rerun.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.beam import DryRun, check_launch, run_pipeline, with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.crawl.config import CrawlConfig
from openwit.pipeline.crawl.extract import CrawlCount, ExtractCandidates
from openwit.pipeline.crawl.links import LinkDrop
from openwit.pipeline.crawl.pages import PageCount
from openwit.pipeline.crawl.records import ReadCount
from openwit.pipeline.jobs.curate import remove_leftovers
from openwit.pipeline.jobs.rerun import INPUTS_FIELD, input_versions, stats_of_same_run
from openwit.pipeline.text.parts import WriteParquetParts

LOGGER = logging.getLogger("openwit")

# stats.json's sections: where each count name goes.
READ_PROBLEMS = (CrawlCount.UNREADABLE_FILE, ReadCount.UNREADABLE_REGION,
                 ReadCount.TRUNCATED_RECORD, ReadCount.OVERSIZED_RECORD,
                 PageCount.MALFORMED_JSON, PageCount.UNDECODABLE_HTML, PageCount.TOO_MANY_LINKS)
SKIPPED_RECORDS = (PageCount.NOT_HTML, PageCount.NOT_OK)
CRAWL_SUMMARY = ("files", "records", "pages", "image_links", "pairs", "duplicate_pairs",
                 "candidates", "dropped_links", "read_problems")  # what a corpus's stats repeat
DROPPED_LINKS = (CrawlCount.NO_ALT, LinkDrop.DATA_URI, LinkDrop.NOT_HTTP, LinkDrop.EMPTY_SRC,
                 LinkDrop.INVALID_URL)


def crawl_inputs_with_versions(config: CrawlConfig) -> list[dict]:
    """Every file the patterns match, with size and version; a pattern that matches none is
    the user's to fix."""
    inputs = input_versions(list(config.inputs))
    matched = {entry["pattern"] for entry in inputs}
    for pattern in config.inputs:
        if pattern not in matched:
            raise ConfigError(f"--{config.mode} {pattern!r} matches no file")
    return inputs


def extract_candidates(config: CrawlConfig, options: PipelineOptions) -> dict | DryRun:
    """Runs the extraction to completion (or finds it finished) and returns its stats; in a
    dry run, translates the graph and touches no storage."""
    FileSystems.set_options(options)
    dry_run = check_launch(options, {f"--{config.mode}": list(config.inputs),
                                     "--output": [config.output]})
    run_config = dataclasses.asdict(config)
    if dry_run:
        # The file count only sizes the dedup's buckets; the patterns stand in for it.
        return run_pipeline(candidates_graph(config, options, len(config.inputs), run_config,
                                             []))
    with storage.at_launch():
        inputs = crawl_inputs_with_versions(config)
        files = len({entry["path"] for entry in inputs})
        storage.check_writable(config.output)
        finished = finished_candidates(config.output, run_config, inputs)
        if finished is not None:
            return finished
        remove_leftovers(config.output)
        storage.delete(storage.glob(layout.candidates_pattern(config.output)))
    started = time.monotonic()
    if (launched_later := run_pipeline(candidates_graph(config, options, files, run_config, inputs))) is not None:
        return launched_later  # a template: the job runs after this process
    with storage.at_launch():
        stats = storage.read_json(storage.join(config.output, layout.STATS_FILE))
        stats["wall_seconds"] = round(time.monotonic() - started, 1)
        storage.write_json_atomic(storage.join(config.output, layout.STATS_FILE), stats)
    return stats


def candidates_graph(config: CrawlConfig, options: PipelineOptions, files: int,
                     run_config: dict, inputs: list[dict]) -> beam.Pipeline:
    pipeline = beam.Pipeline(options=with_local_runner(options))
    result = pipeline | "Extract" >> ExtractCandidates(config, files)
    written = result.candidates | "Write candidates" >> WriteParquetParts(
        config.output, layout.CANDIDATES_PREFIX, layout.CRAWL_CANDIDATE_SCHEMA)
    totals = result.totals | "Collect totals" >> beam.combiners.ToDict()
    # The written paths as a side input: stats.json is written after every part is.
    totals | "Write stats" >> beam.Map(
        lambda counts, paths: write_stats(config.output, counts, len(paths), run_config,
                                          inputs),
        paths=beam.pvalue.AsList(written))
    return pipeline


def finished_candidates(output: str, run_config: dict, inputs: list[dict]) -> dict | None:
    """The stats of a finished extraction with these settings over these files, if its
    candidate files are all there (it has no shards: `rerun.finished_stats` is for corpora)."""
    stats = stats_of_same_run(output, run_config, inputs)
    if stats is None or len(storage.glob(layout.candidates_pattern(output))) != stats.get(
            "candidate_files"):
        return None
    LOGGER.info("%s already holds these crawl files' candidates (same settings); nothing "
                "to do", output)
    return stats


def write_stats(output: str, counts: dict, candidate_files: int, run_config: dict,
                inputs: list[dict]) -> None:
    pairs = counts.get(CrawlCount.PAIRS, 0)
    candidates = counts.get(CrawlCount.CANDIDATES, 0)
    stats = {
        "files": counts.get(CrawlCount.FILES, 0),
        "records": counts.get(CrawlCount.RECORDS, 0),
        "pages": counts.get(CrawlCount.PAGES, 0),
        "image_links": counts.get(CrawlCount.IMAGE_LINKS, 0),
        "pairs": pairs,
        "duplicate_pairs": pairs - candidates,
        "candidates": candidates,
        "candidate_files": candidate_files,
        "dropped_links": {name: counts.get(name, 0) for name in DROPPED_LINKS},
        "skipped_records": {name: counts.get(name, 0) for name in SKIPPED_RECORDS},
        "read_problems": {name: counts.get(name, 0) for name in READ_PROBLEMS},
        "config": run_config,
        INPUTS_FIELD: inputs,
    }
    known = {CrawlCount.FILES, CrawlCount.RECORDS, CrawlCount.PAGES, CrawlCount.IMAGE_LINKS,
             CrawlCount.PAIRS, CrawlCount.CANDIDATES, *DROPPED_LINKS, *SKIPPED_RECORDS,
             *READ_PROBLEMS}
    # A count this module does not place still reaches the user.
    stats["other_counts"] = {name: n for name, n in sorted(counts.items()) if name not in known}
    storage.write_json_atomic(storage.join(output, layout.STATS_FILE), stats)


def format_candidates_summary(stats: dict) -> str:
    def listed(section: dict) -> str:
        items = [f"{name} {n:,}" for name, n in section.items() if n]
        return ", ".join(items) or "-"

    lines = [
        f"{stats['files']:,} crawl files, {stats['records']:,} records, {stats['pages']:,} "
        f"pages with HTML, {stats['image_links']:,} image links",
        f"{stats['pairs']:,} image links with alt text; {stats['duplicate_pairs']:,} repeated "
        f"pairs removed; {stats['candidates']:,} candidates written to "
        f"{stats['config']['output']} ({stats['candidate_files']} files)",
        f"links dropped: {listed(stats['dropped_links'])}",
        f"records skipped: {listed(stats['skipped_records'])}",
        f"read problems: {listed(stats['read_problems'])}",
    ]
    if "wall_seconds" in stats:
        lines.append(f"wall time {stats['wall_seconds']:.1f} s")
    return "\n".join(lines)
