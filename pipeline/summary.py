"""The corpus-level files written once every shard is done: `stats.json` (counts at every stage,
drops by reason), `query_counts.parquet` (per query: matched, kept for download, written),
`shards/sizes.json` (open_clip's convention), and the clean-up of shard files that an earlier
run with another plan left behind.

Shard-level numbers come from the shards' own stats files, so a resumed run reports the whole
corpus, not just the part it wrote.
"""

from __future__ import annotations

import collections
import io
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.records import Stage
from pipeline.shards import FAILURES_FOLDER, SHARDS_FOLDER, shard_name

TEXT_STAGES = (Stage.READ, Stage.NORMALISE, Stage.MATCH, Stage.LANGUAGE, Stage.DEDUP_URL,
               Stage.CAP)
QUERY_COUNTS_SCHEMA = pa.schema(
    [("query", pa.string()), ("matched", pa.int64()), ("kept", pa.int64()),
     ("written", pa.int64())]
)
REUSED_MARK = "reused_from_earlier_run"  # set on stats of shards this run did not rewrite
_SHARD_FILE = re.compile(r"(?:shard-)?(\d+)(?:\.tar|\.parquet|_stats\.json)$")


def corpus_stats(stage_kept: dict, text_dropped: dict, shard_stats: list[dict],
                 num_shards: int) -> dict:
    """stats.json's content from per-stage survivors, text-stage drops and the shards' stats."""
    stages = []
    for stage in TEXT_STAGES:
        dropped = {reason: n for (s, reason), n in sorted(text_dropped.items()) if s == stage}
        stages.append({"stage": stage, "kept": stage_kept.get(stage, 0), "dropped": dropped})

    candidates = sum(s["plan"]["candidates"] for s in shard_stats)
    shard_dropped = {Stage.DOWNLOAD: collections.Counter(),
                     Stage.DEDUP_IMAGE: collections.Counter()}
    for stats in shard_stats:
        for stage, reasons in stats["dropped"].items():
            shard_dropped[stage].update(reasons)
    downloaded = candidates - sum(shard_dropped[Stage.DOWNLOAD].values())
    written = sum(s["written"] for s in shard_stats)
    stages.append({"stage": Stage.DOWNLOAD, "kept": downloaded,
                   "dropped": dict(sorted(shard_dropped[Stage.DOWNLOAD].items()))})
    stages.append({"stage": Stage.DEDUP_IMAGE, "kept": written,
                   "dropped": dict(sorted(shard_dropped[Stage.DEDUP_IMAGE].items()))})
    for entry in stages:
        entry["in"] = entry["kept"] + sum(entry["dropped"].values())

    by_reason = collections.Counter()
    for entry in stages:
        by_reason.update(entry["dropped"])
    languages = collections.Counter()
    for stats in shard_stats:
        languages.update(stats.get("languages", {}))
    input_rows = stages[0]["in"]
    return {
        "input_rows": input_rows,
        "written": written,
        "dropped": input_rows - written,
        "stages": stages,
        "failures_by_reason": dict(by_reason.most_common()),
        "languages": dict(languages.most_common()),
        "shards": {
            "planned": num_shards,
            "with_samples": sum(1 for s in shard_stats if s["written"]),
            "reused": sum(1 for s in shard_stats if s.get(REUSED_MARK)),
            "tar_bytes": sum(s["tar_bytes"] for s in shard_stats),
        },
    }


def check_accounting(stats: dict) -> list[str]:
    """Every stage must receive exactly what the previous one kept: nothing vanishes."""
    problems = []
    for before, after in zip(stats["stages"], stats["stages"][1:]):
        if before["kept"] != after["in"]:
            problems.append(f"{before['stage']} kept {before['kept']} but {after['stage']} "
                            f"received {after['in']}")
    return problems


def stale_shard_files(paths: list[str], num_shards: int) -> list[str]:
    stale = []
    for path in paths:
        if path.endswith(storage.TEMPORARY_SUFFIX):
            stale.append(path)
            continue
        match = _SHARD_FILE.search(path.rsplit("/", 1)[-1])
        if match and int(match.group(1)) >= num_shards:
            stale.append(path)
    return stale


def format_summary(stats: dict, output: str) -> str:
    lines = [f"{'stage':<12} {'in':>10} {'kept':>10}  dropped"]
    for stage in stats["stages"]:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in
                            sorted(stage["dropped"].items(), key=lambda item: -item[1]))
        lines.append(f"{stage['stage']:<12} {stage['in']:>10,} {stage['kept']:>10,}  "
                     f"{reasons or '-'}")
    shards = stats["shards"]
    lines.append("")
    lines.append(f"{stats['written']:,} of {stats['input_rows']:,} candidates written in "
                 f"{shards['with_samples']} shards ({shards['tar_bytes'] / 1e6:,.1f} MB) to "
                 f"{output}/shards")
    queries = stats.get("queries", {})
    if queries:
        lines.append(f"queries: {queries['matched']:,} matched, {queries['kept']:,} kept, "
                     f"{queries['written']:,} written (see query_counts.parquet)")
    if stats.get("accounting_problems"):
        lines.append("ACCOUNTING PROBLEMS: " + "; ".join(stats["accounting_problems"]))
    if shards.get("reused"):
        lines.append(f"{shards['reused']} of {shards['planned']} shards were complete from an "
                     "earlier run and kept as they were")
    if "wall_seconds" in stats:
        lines.append(f"wall time {stats['wall_seconds']:.0f} s")
    return "\n".join(lines)


class FinalizeFn(beam.DoFn):
    def __init__(self, output: str, run_config: dict):
        self._output = output
        self._run_config = run_config

    def process(self, _, stage_kept, text_dropped, shard_stats, num_shards, query_rows):
        shard_stats = sorted(shard_stats, key=lambda s: s["shard"])
        shards_folder = storage.join(self._output, SHARDS_FOLDER)
        failures_folder = storage.join(self._output, FAILURES_FOLDER)
        storage.delete(stale_shard_files(
            storage.glob(storage.join(shards_folder, "*"))
            + storage.glob(storage.join(failures_folder, "shard-*")),
            num_shards,
        ))

        sizes = {f"{shard_name(s['shard'])}.tar": s["written"] for s in shard_stats if s["written"]}
        storage.write_json_atomic(storage.join(shards_folder, "sizes.json"), sizes)

        rows = sorted(query_rows, key=lambda r: (-r["matched"], r["query"]))
        table = pa.Table.from_pylist(rows, schema=QUERY_COUNTS_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        storage.write_bytes_atomic(storage.join(self._output, "query_counts.parquet"),
                                   buffer.getvalue())

        stats = corpus_stats(dict(stage_kept), dict(text_dropped), shard_stats, num_shards)
        stats["queries"] = {
            "matched": sum(1 for r in rows if r["matched"]),
            "kept": sum(1 for r in rows if r["kept"]),
            "written": sum(1 for r in rows if r["written"]),
        }
        stats["accounting_problems"] = check_accounting(stats)
        stats["config"] = self._run_config
        storage.write_json_atomic(storage.join(self._output, "stats.json"), stats)
        yield stats


class CountQueries(beam.PTransform):
    """Candidates -> (query, number of candidates that matched it)."""

    def expand(self, candidates):
        return (candidates
                | "Queries" >> beam.FlatMap(lambda c: c["queries"])
                | "Count" >> beam.combiners.Count.PerElement())


class WriteSummary(beam.PTransform):
    """Inputs (a dict): stage_kept {(stage, n)}, text_failures, shard_stats, num_shards,
    matched and kept (candidate PCollections whose queries are counted)."""

    def __init__(self, output: str, run_config: dict):
        super().__init__()
        self._output = output
        self._run_config = run_config

    def expand(self, inputs: dict):
        p = inputs["shard_stats"].pipeline
        text_dropped = (
            inputs["text_failures"]
            | "Stage and reason" >> beam.Map(lambda f: ((f["stage"], f["reason"]), 1))
            | "Count drops" >> beam.CombinePerKey(sum)
        )
        written = (
            inputs["shard_stats"]
            | "Written queries" >> beam.FlatMap(lambda s: s["queries"].items())
            | "Sum written" >> beam.CombinePerKey(sum)
        )
        query_rows = (
            {
                "matched": inputs["matched"] | "Matched" >> CountQueries(),
                "kept": inputs["kept"] | "Kept" >> CountQueries(),
                "written": written,
            }
            | "Join query counts" >> beam.CoGroupByKey()
            | "Query row" >> beam.MapTuple(lambda q, n: {
                "query": q, "matched": sum(n["matched"]), "kept": sum(n["kept"]),
                "written": sum(n["written"])})
        )
        return (
            p
            | "Once" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(
                FinalizeFn(self._output, self._run_config),
                stage_kept=beam.pvalue.AsDict(inputs["stage_kept"]),
                text_dropped=beam.pvalue.AsDict(text_dropped),
                shard_stats=beam.pvalue.AsList(inputs["shard_stats"]),
                num_shards=beam.pvalue.AsSingleton(inputs["num_shards"]),
                query_rows=beam.pvalue.AsList(query_rows),
            )
        )
