"""`openwit curate`: candidate lists -> a balanced, language-filtered list to download.

    pass 1:  read -> normalise -> match -> _work/matched-*.parquet
                                        -> find duplicate URLs
    pass 2:  _work/matched-*.parquet (row, query ids) -> without duplicate URLs -> count per query
    pass 3:  _work/matched-*.parquet -> drop duplicate URLs -> balance -> language

Balancing needs every query's count over the whole (URL-deduplicated) pool before the first
candidate can be sampled. Rather than hold the pool in memory between the passes (memory
growing with the pool), pass 1 writes the matched candidates to parquet files in the output
folder, and the later passes read them back (Beam orders them through the files' names, which
the write emits once it is finished). Only the query counts and the rows that lost URL dedup
cross between passes in memory, so memory stays nearly flat as the pool grows, and nothing is
parsed, normalised or matched twice. The work folder is removed when the run succeeds.

Order, cheapest first where a stage can drop: the text checks cost microseconds; URL dedup runs
before counting so that a repeated URL does not count twice; language identification, the
slowest step by far, runs last and only on candidates that balancing kept.

Writes, into the output folder: `curated.parquet/` (parquet part files, one row per kept
candidate), `query_counts.parquet`, `failures/text-*.parquet` and `stats.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import storage
from pipeline.balance import BalanceStep, CountQueryMatches, CountQueryMatchesInParts
from pipeline.config import ConfigError, CurateConfig, MatchConfig, validate_curate
from pipeline.dedup import DropDuplicateUrlsStep, FindDuplicateUrls
from pipeline.language import LanguageStep
from pipeline.match import METACLIP_MODE, MatchStep
from pipeline.normalise import NormaliseStep
from pipeline.parts import ReadParquetParts, WriteParquetParts
from pipeline.read import ReadCandidates
from pipeline.records import FAILURE_SCHEMA, Stage, in_global_window
from pipeline.shards import encode_parquet
from pipeline.steps import BATCH_SIZE, RunSteps, Step
from pipeline.summary import check_curated, format_stage_table, text_stage_entries
from queries.table import load_query_strings

LOGGER = logging.getLogger("openwit")

CURATED_FOLDER = "curated.parquet"
WORK_FOLDER = "_work"
MATCHED_PREFIX = "matched"
CURATED_PREFIX = "part"
FAILURES_FOLDER = "failures"
TEXT_FAILURES_PREFIX = "text"
QUERY_COUNTS_FILE = "query_counts.parquet"
STATS_FILE = "stats.json"

CURATED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("query_ids", pa.list_(pa.int32())),
        ("queries", pa.list_(pa.string())),
        ("keep_probability", pa.float64()),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
    ]
)
MATCHED_SCHEMA = pa.schema(
    [("key", pa.string()), ("url", pa.string()), ("caption", pa.string()),
     ("row", pa.int64()), ("query_ids", pa.list_(pa.int32()))]
)
QUERY_COUNTS_SCHEMA = pa.schema(
    [("query_id", pa.int32()), ("query", pa.string()), ("matched", pa.int64()),
     ("kept", pa.int64())]
)


def load_queries(config: MatchConfig) -> list[str]:
    """The query strings by id, exactly as the matcher numbers them."""
    if config.queries is None:
        return []
    return load_query_strings(config.queries, exact=config.mode == METACLIP_MODE)


class _CountLanguages(beam.DoFn):
    """Lists of curated candidates -> (language, candidates) per bundle."""

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, batch):
        self._counts.update(candidate["language"] for candidate in batch)

    def finish_bundle(self):
        for pair in self._counts.items():
            yield in_global_window(pair)


class NameQueriesStep(Step):
    """Adds the matched query strings, for people and for the shards' metadata."""

    def __init__(self, config: MatchConfig):
        self._config = config

    def setup(self):
        self._queries = load_queries(self._config)
        # Only an exact (metaclip) table keeps duplicate entries, whose names repeat.
        self._may_repeat = self._config.mode == METACLIP_MODE

    def run(self, candidates, side):
        queries, may_repeat = self._queries, self._may_repeat
        named = []
        for candidate in candidates:
            names = [queries[i] for i in candidate["query_ids"]]
            named.append({**candidate,
                          "queries": sorted(set(names)) if may_repeat else sorted(names)})
        return named, []


class QueryRowsFn(beam.DoFn):
    """The matched and kept count vectors -> a query_counts row per query that matched."""

    def __init__(self, config: MatchConfig):
        self._config = config

    def setup(self):
        self._queries = load_queries(self._config)

    def process(self, matched, kept):
        kept = np.concatenate([kept, np.zeros(max(0, len(matched) - len(kept)), np.int64)])
        for query_id in np.flatnonzero(matched).tolist():
            yield {"query_id": query_id, "query": self._queries[query_id],
                   "matched": int(matched[query_id]), "kept": int(kept[query_id])}


class CurateResult(typing.NamedTuple):
    curated: beam.PCollection  # lists of candidate dicts with the fields of CURATED_SCHEMA
    failures: dict  # stage -> its failure dicts (kept apart: see `write_failures`)
    stage_entries: beam.PCollection  # a singleton: {stages: [{stage, in, kept, dropped}] in
    #                                   stage order, problems: [accounting problems]}
    query_rows: beam.PCollection  # {query_id, query, matched, kept}
    languages: beam.PCollection  # (language, curated candidates)


class CurateCandidates(beam.PTransform):
    def __init__(self, config: CurateConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        config = self._config
        # Candidates travel in lists between the transforms (pipeline/steps.py).
        read = pbegin | "Read candidates" >> ReadCandidates(config.read, batch_size=BATCH_SIZE)
        matched = read.kept | "Normalise and match" >> RunSteps(
            [NormaliseStep(config.normalise), MatchStep(config.match)])
        matched_files = matched.kept | "Keep matched for pass 2" >> WriteParquetParts(
            storage.join(config.output, WORK_FOLDER), MATCHED_PREFIX, MATCHED_SCHEMA)
        duplicates = matched.kept | "Find duplicate URLs" >> FindDuplicateUrls(batched=True)

        # Pass 2 counts the unique candidates; it starts when the files are complete.
        counts = matched_files | "Count matches per query" >> CountQueryMatchesInParts(
            duplicates)

        # Pass 3 samples with the counts and identifies languages.
        rematched = matched_files | "Pass 3: read" >> ReadParquetParts(
            batch_rows=BATCH_SIZE)
        curated = rematched | "Dedup, balance, language" >> RunSteps(
            [DropDuplicateUrlsStep(), BalanceStep(config.balance),
             LanguageStep(config.language), NameQueriesStep(config.match)],
            side_inputs={"losers": beam.pvalue.AsDict(duplicates),
                         "counts": beam.pvalue.AsSingleton(counts)})

        failures = {Stage.READ: read.failed, **matched.failed, **curated.failed}
        dropped = [
            failed
            | f"Reasons of {name}" >> beam.Map(lambda f: ((f["stage"], f["reason"]), 1))
            | f"Count {name} drops" >> beam.CombinePerKey(sum)
            for name, failed in failures.items()
        ] | "Drops of every stage" >> beam.Flatten()
        input_rows = read.rows | "Input rows" >> beam.CombineGlobally(sum)
        kept_counts = curated.kept | "Kept per query" >> CountQueryMatches()
        languages = (curated.kept
                     | "Languages in bundle" >> beam.ParDo(_CountLanguages())
                     | "Per language" >> beam.CombinePerKey(sum))
        # Every curated candidate has one language, so the languages' sum is the total.
        curated_count = (
            languages
            | "Language totals" >> beam.Values()
            | "Curated" >> beam.CombineGlobally(sum)
        )

        def entries_and_check(input_rows, dropped, curated_count):
            entries = text_stage_entries(input_rows, dropped)
            return {"stages": entries, "problems": check_curated(entries, curated_count)}

        stage_entries = (
            input_rows
            | "Stage entries" >> beam.Map(
                entries_and_check, dropped=beam.pvalue.AsDict(dropped),
                curated_count=beam.pvalue.AsSingleton(curated_count))
        )
        query_rows = counts | "Query rows" >> beam.ParDo(
            QueryRowsFn(config.match), kept=beam.pvalue.AsSingleton(kept_counts))
        return CurateResult(curated.kept, failures, stage_entries, query_rows, languages)


def write_query_counts(path: str, rows: list[dict], schema: pa.Schema) -> None:
    rows = sorted(rows, key=lambda r: r["query_id"])
    storage.write_bytes_atomic(path, encode_parquet(rows, schema))


def curate_stats(stage_entries: dict, languages: dict, query_rows: list[dict],
                 config: CurateConfig) -> dict:
    problems = stage_entries["problems"]
    stage_entries = stage_entries["stages"]
    by_reason = collections.Counter()
    for entry in stage_entries:
        by_reason.update(entry["dropped"])
    curated = stage_entries[-1]["kept"]
    over_cap = sum(1 for r in query_rows if r["kept"] > config.balance.per_query_cap)
    return {
        "input_rows": stage_entries[0]["in"],
        "curated": curated,
        "stages": stage_entries,
        "failures_by_reason": dict(by_reason.most_common()),
        "languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
        "queries": {
            "matched": sum(1 for r in query_rows if r["matched"]),
            "kept": sum(1 for r in query_rows if r["kept"]),
            "above_cap_before_download": over_cap,
        },
        "accounting_problems": problems,
        "balance": {"per_query_cap": config.balance.per_query_cap,
                    "oversample": config.balance.oversample, "target": config.balance.target},
        "config": dataclasses.asdict(config),
    }


class WriteCuratedSummaryFn(beam.DoFn):
    def __init__(self, config: CurateConfig):
        self._config = config

    def process(self, _, stage_entries, languages, query_rows):
        output = self._config.output
        write_query_counts(storage.join(output, QUERY_COUNTS_FILE), query_rows,
                           QUERY_COUNTS_SCHEMA)
        stats = curate_stats(stage_entries, dict(languages), query_rows, self._config)
        storage.write_json_atomic(storage.join(output, STATS_FILE), stats)
        yield stats


def write_failures(failures: dict, output: str) -> None:
    """One writer per stage, fused with the stage itself: a local runner would otherwise hold
    every failure of every stage in memory until the last stage finished (a Flatten of
    PCollections from different stages is materialised)."""
    for stage, failed in failures.items():
        failed | f"Write {stage} failures" >> WriteParquetParts(
            storage.join(output, FAILURES_FOLDER), f"{TEXT_FAILURES_PREFIX}-{stage}",
            FAILURE_SCHEMA)


class WriteCurated(beam.PTransform):
    """CurateResult -> curated.parquet/, failures/, query_counts.parquet, stats.json."""

    def __init__(self, config: CurateConfig):
        super().__init__()
        self._config = config

    def expand(self, result: CurateResult):
        output = self._config.output
        result.curated | "Write curated" >> WriteParquetParts(
            storage.join(output, CURATED_FOLDER), CURATED_PREFIX, CURATED_SCHEMA)
        write_failures(result.failures, output)
        return (
            result.curated.pipeline
            | "Summary once" >> beam.Create([None])
            | "Write summary" >> beam.ParDo(
                WriteCuratedSummaryFn(self._config),
                stage_entries=beam.pvalue.AsSingleton(result.stage_entries),
                languages=beam.pvalue.AsList(result.languages),
                query_rows=beam.pvalue.AsList(result.query_rows))
        )


def with_local_runner(options: PipelineOptions) -> PipelineOptions:
    """Beam's default runner first tries to download Prism; run locally unless told otherwise.

    The DirectRunner runs in memory unless --direct_running_mode says otherwise.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    return options


def check_inputs(config: CurateConfig) -> None:
    """Fail at launch, with the path in the message, rather than deep inside a worker."""
    for pattern in config.read.candidates:
        if not storage.glob(pattern):
            raise ConfigError(f"--candidates {pattern!r} matches no file")
    if config.match.queries is not None and not storage.glob(config.match.queries):
        raise ConfigError(f"--queries {config.match.queries!r} does not exist")


def clear_text_outputs(output: str) -> None:
    """Removes what every run writes anew (Beam's part files would otherwise pile up)."""
    storage.delete(
        storage.glob(storage.join(output, CURATED_FOLDER, CURATED_PREFIX + "-*"))
        + storage.glob(storage.join(output, FAILURES_FOLDER, TEXT_FAILURES_PREFIX + "-*"))
    )
    clear_work_folder(output)


def clear_work_folder(output: str) -> None:
    storage.delete(storage.glob(storage.join(output, WORK_FOLDER, "*")))
    work = storage.join(output, WORK_FOLDER)
    if FileSystems.exists(work) and not storage.glob(storage.join(work, "*")):
        FileSystems.delete([work])


def curate(config: CurateConfig, options: PipelineOptions) -> dict:
    """Runs the curate pipeline to completion and returns its stats."""
    FileSystems.set_options(options)
    validate_curate(config)
    check_inputs(config)
    clear_text_outputs(config.output)
    started = time.monotonic()
    with beam.Pipeline(options=with_local_runner(options)) as pipeline:
        result = pipeline | "Curate" >> CurateCandidates(config)
        result | "Write" >> WriteCurated(config)
    clear_work_folder(config.output)
    stats_path = storage.join(config.output, STATS_FILE)
    stats = storage.read_json(stats_path)
    stats["wall_seconds"] = round(time.monotonic() - started, 1)
    storage.write_json_atomic(stats_path, stats)
    return stats


def run(argv: list[str] | None = None) -> dict:
    """`openwit curate`'s entry: openwit's and Beam's flags together, as on the command line."""
    options = PipelineOptions(argv)
    return curate(CurateConfig.from_options(options), options)


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
