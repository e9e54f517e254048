"""The text half (stages 1-6): candidate lists -> a balanced, language-filtered list to download.

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

`CurateCandidates` is the half as one composite transform (`openwit build` runs it before the
image half); `WriteCurated` writes what `openwit curate` leaves (jobs/curate.py):
`curated.parquet/` (parquet part files, one row per kept candidate), `query_counts.parquet`,
`failures/text-*.parquet` and `stats.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import typing

import apache_beam as beam
import numpy as np

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.layout import (
    CURATED_FOLDER,
    CURATED_PREFIX,
    CURATED_QUERY_COUNTS_SCHEMA,
    CURATED_SCHEMA,
    FAILURE_SCHEMA,
    MATCHED_PREFIX,
    MATCHED_SCHEMA,
    TEXT_FAILURES_PREFIX,
    WORK_FOLDER,
)
from openwit.pipeline.core.records import Stage, in_global_window
from openwit.pipeline.shards.summary import check_curated, text_stage_entries
from openwit.pipeline.text.balance import BalanceStep, CountQueryMatches, CountQueryMatchesInParts
from openwit.pipeline.text.config import CurateConfig, MatchConfig
from openwit.pipeline.text.language import LanguageStep
from openwit.pipeline.text.match import METACLIP_MODE, MatchStep
from openwit.pipeline.text.normalise import NormaliseStep
from openwit.pipeline.text.parts import ReadParquetParts, WriteParquetParts
from openwit.pipeline.text.read import ReadCandidates
from openwit.pipeline.text.steps import BATCH_SIZE, RunSteps, Step
from openwit.pipeline.text.url_dedup import DropDuplicateUrlsStep, FindDuplicateUrls
from openwit.queries.table import load_query_strings


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
        read = pbegin | "Read candidates" >> ReadCandidates(config.read)
        matched = read.kept | "Normalise and match" >> RunSteps(
            [NormaliseStep(config.normalise), MatchStep(config.match)])
        matched_files = matched.kept | "Keep matched for pass 2" >> WriteParquetParts(
            storage.join(config.output, WORK_FOLDER), MATCHED_PREFIX, MATCHED_SCHEMA)
        duplicates = matched.kept | "Find duplicate URLs" >> FindDuplicateUrls()

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


def write_query_counts(path: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["query_id"])
    storage.write_bytes_atomic(path, storage.encode_parquet(rows, CURATED_QUERY_COUNTS_SCHEMA))


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
        write_query_counts(storage.join(output, layout.QUERY_COUNTS_FILE), query_rows)
        stats = curate_stats(stage_entries, dict(languages), query_rows, self._config)
        storage.write_json_atomic(storage.join(output, layout.STATS_FILE), stats)
        yield stats


def write_failures(failures: dict, output: str) -> None:
    """One writer per stage, fused with the stage itself: a local runner would otherwise hold
    every failure of every stage in memory until the last stage finished (a Flatten of
    PCollections from different stages is materialised)."""
    for stage, failed in failures.items():
        failed | f"Write {stage} failures" >> WriteParquetParts(
            storage.join(output, layout.FAILURES_FOLDER), f"{TEXT_FAILURES_PREFIX}-{stage}",
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
