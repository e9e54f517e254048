"""`openwit queries`: the concept query table, built the way the CLIP paper describes it.

    Wikipedia dump ──► unigrams (count >= 100), bigrams (PMI >= 30), titles ─┐
    page views ──────► titles viewed >= 70 times ────────────────────────────┤
    WordNet ─────────► every synset lemma ────────────────────────────────────┼─► merge on the
    wordfreq ────────► unigrams (offline stand-in for Wikipedia counts) ──────┤   normalised
    user additions ───────────────────────────────────────────────────────────┘   string
                                 stop lists, strings without a letter or digit ──► dropped
                                 ──► queries.parquet (sorted, ids 0..n-1) + stats.json

Every source is a composite transform in its own module; this one merges their rows and writes
the table. Ids are positions in the table sorted by merge key, so the same inputs give the
same ids on any runner.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import math
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsList

from openwit.pipeline.core import storage
from openwit.pipeline.core import layout
from openwit.pipeline.core.beam import DryRun, check_launch, run_pipeline, with_local_runner
from openwit.pipeline.core.errors import ConfigError
from openwit.queries.config import QueriesConfig
from openwit.queries.pageviews import ReadPageviews, TitlesFromPageviews
from openwit.queries.rows import (
    MERGED_COLUMNS,
    STATS,
    Dropped,
    Source,
    has_word_character,
    merge_key,
    merge_rows,
    stat,
)
from openwit.queries.wikipedia import WikipediaQueries
from openwit.queries.wordlists import ReadQueryLists, UserQueries, WordfreqQueries
from openwit.queries.wordnet import DATA_FILES, WordNetQueries

LOGGER = logging.getLogger("openwit")


def _merge_group(key_and_groups):
    key, groups = key_and_groups
    rows = list(groups["rows"])
    if list(groups["stop"]):
        yield beam.pvalue.TaggedOutput(STATS, stat(f"dropped.{Dropped.STOP_LIST}"))
        return
    if not rows:
        return
    merged = merge_rows(rows)
    if not has_word_character(merged[0]):
        yield beam.pvalue.TaggedOutput(STATS, stat(f"dropped.{Dropped.NO_WORD_CHARACTER}"))
        return
    yield key, merged


class MergeQueryRows(beam.PTransform):
    """Source rows -> (merge key, merged row), one per distinct query; drops are counted."""

    def __init__(self, case_sensitive: bool, stop_keys):
        super().__init__()
        self._case_sensitive = case_sensitive
        self._stop_keys = stop_keys

    def expand(self, rows):
        case_sensitive = self._case_sensitive
        keyed = rows | "Key rows" >> beam.Map(lambda r: (merge_key(r.query, case_sensitive), r))
        merged = (
            {"rows": keyed, "stop": self._stop_keys}
            | "Group by query" >> beam.CoGroupByKey()
            | "Merge" >> beam.FlatMap(_merge_group).with_outputs(STATS, main="merged")
        )
        return merged["merged"], merged[STATS]


def source_counts(sources_column) -> dict:
    """Per source: rows it contributed to, and rows no other source gave."""
    in_table, only = collections.Counter(), collections.Counter()
    for sources in sources_column:
        in_table.update(sources)
        if len(sources) == 1:
            only[sources[0]] += 1
    return {source: {"rows": in_table[source], "only_this_source": only[source]}
            for source in Source.ORDER if in_table[source]}


def table_bytes(columns: dict) -> bytes:
    table = pa.Table.from_pydict(columns, schema=layout.QUERY_TABLE_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


class WriteQueryTableFn(beam.DoFn):
    """All merged rows (one list) -> queries.parquet and stats.json, each written atomically."""

    def __init__(self, output: str, config_dict: dict):
        self._output = output
        self._config = config_dict

    def process(self, keyed_rows: list, stat_pairs: list):
        keyed_rows.sort(key=lambda kv: kv[0])
        values = list(zip(*(row for _, row in keyed_rows))) or [()] * len(MERGED_COLUMNS)
        columns = {"id": range(len(keyed_rows)), **dict(zip(MERGED_COLUMNS, values))}
        counts = collections.Counter()
        for name, value in stat_pairs:
            counts[name] += value
        stats = {
            "rows": len(keyed_rows),
            "by_source": source_counts(columns["sources"]),
            "counts": dict(sorted(counts.items())),
            "config": self._config,
        }
        output = self._output
        storage.write_bytes_atomic(storage.join(output, layout.QUERY_TABLE_FILE),
                                   table_bytes(columns))
        storage.write_json_atomic(storage.join(output, layout.QUERY_TABLE_STATS_FILE), stats)
        yield stats


class BuildQueryTable(beam.PTransform):
    """Every configured source -> the written table; returns a PCollection of its stats."""

    def __init__(self, config: QueriesConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        config = self._config
        sources, stats = [], []

        views = None
        if config.titles.pageviews:
            views, view_stats = pbegin | "Page views" >> ReadPageviews(config.titles)
            stats.append(view_stats)
        if config.wikipedia.dumps:
            rows, wiki_stats = pbegin | "Wikipedia" >> WikipediaQueries(
                config.wikipedia, config.titles, views)
            sources.append(rows)
            stats.append(wiki_stats)
        elif views is not None:
            sources.append(views | "Titles from page views" >> TitlesFromPageviews(config.titles))
        if config.wordnet.folder:
            rows, wordnet_stats = pbegin | "WordNet" >> WordNetQueries(config.wordnet)
            sources.append(rows)
            stats.append(wordnet_stats)
        if config.wordfreq.enabled:
            rows, wordfreq_stats = pbegin | "Wordfreq" >> WordfreqQueries(config.wordfreq)
            sources.append(rows)
            stats.append(wordfreq_stats)
        if config.table.extra_queries:
            rows, user_stats = pbegin | "User additions" >> UserQueries(config.table.extra_queries)
            sources.append(rows)
            stats.append(user_stats)

        case_sensitive = config.table.case_sensitive
        stop_keys = (
            pbegin
            | "Stop lists" >> ReadQueryLists(config.table.stop_lists)
            | "Stop keys" >> beam.Map(lambda q: (merge_key(q, case_sensitive), True))
        )
        all_rows = sources | "All source rows" >> beam.Flatten()
        admitted = all_rows | "Admitted per source" >> beam.Map(
            lambda r: stat(f"admitted.{r.source}"))
        merged, merge_stats = all_rows | "Merge" >> MergeQueryRows(case_sensitive, stop_keys)
        all_stats = [*stats, admitted, merge_stats] | "All stats" >> beam.Flatten()
        return (
            merged
            | "One table" >> beam.combiners.ToList()
            | "Write table" >> beam.ParDo(
                WriteQueryTableFn(config.table.output, dataclasses.asdict(config)),
                AsList(all_stats | "Sum stats" >> beam.CombinePerKey(sum)))
        )


def check_inputs(config: QueriesConfig) -> None:
    """Fail at launch, naming the path, rather than inside a worker."""
    patterns = [*config.wikipedia.dumps, *config.titles.pageviews, *config.table.extra_queries,
                *config.table.stop_lists]
    for pattern in patterns:
        if not storage.glob(pattern):
            raise ConfigError(f"{pattern!r} matches no file")
    if config.wordnet.folder:
        missing = [name for name in DATA_FILES
                   if not storage.exists(storage.join(config.wordnet.folder, name))]
        if missing:
            raise ConfigError(f"--wordnet {config.wordnet.folder!r} lacks {', '.join(missing)} "
                              "(install Debian's wordnet-base, or pass --wordnet none)")


def build_queries(config: QueriesConfig, options: PipelineOptions) -> dict | DryRun:
    """Runs `openwit queries` to completion and returns its stats; in a dry run, translates
    the graph and touches no storage. WordNet's folder is read by the workers: the Dataflow
    container (infra/dataflow/) carries Debian's at the default place."""
    FileSystems.set_options(options)
    config.validate()
    dry_run = check_launch(options, {
        "--wikipedia-dump": list(config.wikipedia.dumps),
        "--pageviews": list(config.titles.pageviews),
        "--extra-queries": list(config.table.extra_queries),
        "--stop-list": list(config.table.stop_lists),
        "--output": [config.table.output]})
    if dry_run:
        return run_pipeline(queries_graph(config, options))
    with storage.at_launch():
        check_inputs(config)
    if not config.wordnet.folder:
        LOGGER.warning("WordNet is not used (none installed at the default place, or "
                       "--wordnet none): the table lacks the paper's synset queries")
    started = time.monotonic()
    if (launched_later := run_pipeline(queries_graph(config, options))) is not None:
        return launched_later  # a template: the job runs after this process
    with storage.at_launch():
        stats = storage.read_json(storage.join(config.table.output,
                                               layout.QUERY_TABLE_STATS_FILE))
    stats["wall_seconds"] = round(time.monotonic() - started, 1)
    _warn_about_empty_bigrams(config, stats)
    return stats


def queries_graph(config: QueriesConfig, options: PipelineOptions) -> beam.Pipeline:
    pipeline = beam.Pipeline(options=with_local_runner(options))
    pipeline | "Query table" >> BuildQueryTable(config)
    return pipeline


def _warn_about_empty_bigrams(config: QueriesConfig, stats: dict) -> None:
    tokens = stats["counts"].get("wikipedia.tokens", 0)
    if config.wikipedia.dumps and tokens and math.log2(tokens) < config.wikipedia.min_bigram_pmi:
        LOGGER.warning("the dump has %s tokens: no bigram can reach PMI %.1f (the most any can "
                       "score is log2(N) = %.1f); lower --min-bigram-pmi for a dump this small",
                       f"{tokens:,}", config.wikipedia.min_bigram_pmi, math.log2(tokens))


def format_stats(stats: dict, output: str) -> str:
    table_path = storage.join(output, layout.QUERY_TABLE_FILE)
    lines = [f"{stats['rows']:,} queries written to {table_path}",
             f"{'source':<10} {'admitted':>10} {'in table':>10} {'only here':>10}"]
    counts = stats["counts"]
    for source in Source.ORDER:
        admitted = counts.get(f"admitted.{source}", 0)
        table = stats["by_source"].get(source, {"rows": 0, "only_this_source": 0})
        if admitted or table["rows"]:
            lines.append(f"{source:<10} {admitted:>10,} {table['rows']:>10,} "
                         f"{table['only_this_source']:>10,}")
    dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
    if dropped:
        lines.append("dropped: " + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())))
    failed = {k: v for k, v in counts.items() if ".failed." in k}
    if failed:
        lines.append("unreadable input: " + ", ".join(f"{k} {v:,}" for k, v in sorted(failed.items())))
    return "\n".join(lines)
