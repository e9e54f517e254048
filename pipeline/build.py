"""`openwit download` and `openwit build`: curated candidates -> a finished WebDataset corpus.

    curated -> plan shards -> download + resize -> dedup images -> exact cap -> write shards
            -> summary

`openwit build` runs `openwit curate` (pipeline/curate.py) and this half in one job;
`openwit download --curated DIR` runs this half on what `openwit curate` wrote. Every stage is a
composite transform in its own module; this one only wires them together.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import storage
from pipeline.cap import FinalCap
from pipeline.config import (
    BuildConfig,
    ConfigError,
    FetchConfig,
    validate_curate,
    validate_fetch,
)
from pipeline.curate import (
    CURATED_FOLDER,
    QUERY_COUNTS_FILE,
    STATS_FILE,
    CurateCandidates,
    check_inputs,
    clear_text_outputs,
    clear_work_folder,
    with_local_runner,
    write_failures,
)
from pipeline.dedup import FindImageDuplicates, duplicate_image_drop
from pipeline.download import DownloadImages
from pipeline.records import Stage
from pipeline.shards import (
    PlanShards,
    WriteShards,
    read_completed_shards,
    read_written_samples,
)
from pipeline.steps import unbatch
from pipeline.summary import REUSED_MARK, WriteSummary

LOGGER = logging.getLogger("openwit")


def _light(shard_and_sample):
    shard, sample = shard_and_sample
    return sample["key"], {"key": sample["key"], "shard": shard, "queries": sample["queries"],
                           "new": True}


def _unless_duplicate(key, parts):
    if not parts["duplicate"]:
        yield from parts["sample"]


class FetchCorpus(beam.PTransform):
    """{curated, text_entries, query_rows} -> the corpus stats (a singleton).

    curated: candidate dicts as curation leaves them; text_entries: a singleton list of the
    curate stages' entries; query_rows: {query_id, query, matched, kept} per query.
    `completed_shards`: stats of shards an earlier run finished in the same output.
    """

    def __init__(self, config: FetchConfig, run_config: dict,
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
        written = plan.reused | "Samples of completed shards" >> beam.FlatMap(
            read_written_samples(output)
        )
        duplicates = downloaded.kept | "Find duplicate images" >> FindImageDuplicates(
            written | "Hashes of completed shards" >> beam.Map(
                lambda s: (s["sha256"], s["key"], s["shard"]))
        )
        survivors = (
            {
                "sample": downloaded.kept | "Key and queries" >> beam.Map(_light),
                "duplicate": duplicates | "Loser keys" >> beam.Map(lambda kv: (kv[1][0], True)),
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
            | "Exact cap" >> FinalCap(config.cap)
        )
        drops = (
            duplicates | "Duplicate drops" >> beam.Map(duplicate_image_drop),
            over_cap,
        ) | "Late drops" >> beam.Flatten()
        new_shard_stats = {
            "samples": downloaded.kept,
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


class BuildCorpus(beam.PTransform):
    """The whole build: curate, then fetch, in one pipeline."""

    def __init__(self, config: BuildConfig, completed_shards: dict[int, dict] | None = None):
        super().__init__()
        self._config = config
        self._completed = completed_shards or {}

    def expand(self, pbegin):
        config = self._config
        curated = pbegin | "Curate" >> CurateCandidates(config.curate)
        write_failures(curated.failures, config.fetch.shards.output)
        return {
            "curated": unbatch(curated.curated, "Curated candidates"),
            "text_entries": curated.stage_entries,
            "query_rows": curated.query_rows,
        } | "Fetch" >> FetchCorpus(config.fetch, build_run_config(config), self._completed)


def build_run_config(config: BuildConfig) -> dict:
    fetch = dataclasses.asdict(config.fetch)
    return {**dataclasses.asdict(config.curate), **fetch}


def prepare_output(output: str) -> dict[int, dict]:
    """Clears what every run recomputes; returns the shards an earlier run completed."""
    clear_text_outputs(output)
    completed = read_completed_shards(output)
    if completed:
        LOGGER.info("output holds %d completed shards from an earlier run; they are kept if "
                    "this run plans them identically", len(completed))
    return completed


def _finish(output: str, started: float, extra: dict | None = None) -> dict:
    stats_path = storage.join(output, STATS_FILE)
    stats = storage.read_json(stats_path)
    stats.update(extra or {})
    stats["wall_seconds"] = round(time.monotonic() - started, 1)
    storage.write_json_atomic(stats_path, stats)
    return stats


def build(config: BuildConfig, options: PipelineOptions) -> dict:
    """Runs curate and fetch as one pipeline and returns the corpus stats."""
    # s3:// and gs:// take credentials and endpoints from the options, at launch too.
    FileSystems.set_options(options)
    validate_curate(config.curate)
    validate_fetch(config.fetch)
    check_inputs(config.curate)
    output = config.fetch.shards.output
    completed = prepare_output(output)
    started = time.monotonic()
    with beam.Pipeline(options=with_local_runner(options)) as pipeline:
        pipeline | "Build corpus" >> BuildCorpus(config, completed)
    clear_work_folder(output)
    balance = dataclasses.asdict(config.curate.balance)
    return _finish(output, started, {"balance": {**balance, "target": config.curate.balance.target}})


def read_curation(curated: str) -> tuple[list[dict], list[dict], dict]:
    """What `openwit curate` (or an earlier build/download) wrote: stage entries, query rows
    and the balance settings."""
    stats_path = storage.join(curated, STATS_FILE)
    if not FileSystems.exists(stats_path):
        raise ConfigError(f"--curated {curated!r} holds no {STATS_FILE}; run `openwit curate` "
                          "into it first")
    stats = storage.read_json(stats_path)
    entries = [e for e in stats["stages"] if e["stage"] in Stage.TEXT]
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(curated, QUERY_COUNTS_FILE))),
                          columns=["query_id", "query", "matched", "kept"])
    return entries, table.to_pylist(), stats["balance"]


def download(config: FetchConfig, curated: str, options: PipelineOptions) -> dict:
    """Runs the fetch half on a curated folder and returns the corpus stats."""
    FileSystems.set_options(options)
    validate_fetch(config)
    entries, query_rows, balance = read_curation(curated)
    parts = storage.glob(storage.join(curated, CURATED_FOLDER, "*.parquet"))
    if not parts:
        raise ConfigError(f"--curated {curated!r} holds no {CURATED_FOLDER}/*.parquet")
    output = config.shards.output
    completed = read_completed_shards(output)
    started = time.monotonic()
    run_config = {**dataclasses.asdict(config), "curated": curated}
    with beam.Pipeline(options=with_local_runner(options)) as pipeline:
        curated_rows = pipeline | "Read curated" >> beam.io.ReadFromParquet(
            storage.join(curated, CURATED_FOLDER, "*.parquet"))
        {
            "curated": curated_rows,
            "text_entries": pipeline | "Curate stages" >> beam.Create(
                [{"stages": entries, "problems": []}]),
            "query_rows": pipeline | "Curated query counts" >> beam.Create(query_rows),
        } | "Fetch" >> FetchCorpus(config, run_config, completed)
    return _finish(output, started, {"balance": balance})


def run(argv: list[str] | None = None) -> dict:
    """`openwit build`'s entry: openwit's and Beam's flags together, as on the command line."""
    options = PipelineOptions(argv)
    return build(BuildConfig.from_options(options), options)


def run_download(argv: list[str] | None = None) -> dict:
    """`openwit download`'s entry."""
    from pipeline.config import BuildOptions, reject_unknown_options

    options = PipelineOptions(argv)
    reject_unknown_options(options)
    curated = options.view_as(BuildOptions).curated
    if not curated:
        raise ConfigError("--curated is required (the output folder of `openwit curate`)")
    curated = curated.rstrip("/")
    FileSystems.set_options(options)
    _, _, balance = read_curation(curated)
    config = FetchConfig.from_options(options, default_cap=balance["per_query_cap"])
    return download(config, curated, options)
