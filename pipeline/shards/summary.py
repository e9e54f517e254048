"""Stage 11's end: the corpus-level files written once every shard is done: `stats.json` (counts at every stage,
drops by reason), `query_counts.parquet` (per query: matched, kept for download, written),
`shards/sizes.json` (open_clip's convention), and the clean-up of shard files that an earlier
run with another plan left behind.

Shard-level numbers come from the shards' own stats files, so a resumed run reports the whole
corpus, not just the part it wrote.
"""

from __future__ import annotations

import collections
import re

import apache_beam as beam

from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.layout import FAILURES_FOLDER, SHARD_FAILURES_PREFIX, SHARDS_FOLDER, shard_name
from openwit.pipeline.core.records import Reason, Stage
REUSED_MARK = "reused_from_earlier_run"  # set on stats of shards this run did not rewrite
_SHARD_FILE = re.compile(r"(?:shard-)?(\d+)(?:\.tar|\.parquet|_stats\.json|-removed\.tar)$")


def text_stage_entries(input_rows: int, dropped: dict) -> list[dict]:
    """[{stage, in, kept, dropped: {reason: n}}] for the curate stages, in order.

    input_rows: the rows the read stage parsed; dropped: {(stage, reason): n}. Each stage
    receives what the one before kept, so only the input rows and the drops need counting (a
    count per stage would cost the pipeline a pass per stage); that the last stage's derived
    survivors equal the candidates actually curated is checked by `check_curated`, so a
    candidate lost without a failure record still shows.
    """
    entries = []
    received = input_rows
    for stage in Stage.TEXT:
        reasons = {reason: n for (s, reason), n in sorted(dropped.items()) if s == stage}
        kept = received - sum(reasons.values())
        entries.append({"stage": stage, "in": received, "kept": kept, "dropped": reasons})
        received = kept
    return entries


def check_curated(entries: list[dict], curated: int) -> list[str]:
    expected = entries[-1]["kept"]
    if expected == curated:
        return []
    return [f"{entries[-1]['stage']} should have kept {expected} (its input less its "
            f"failures) but {curated} were curated"]


def corpus_stats(text_entries: list[dict], shard_stats: list[dict], num_shards: int) -> dict:
    """stats.json's content from the curate stages' entries and the shards' own stats."""
    stages = [dict(entry) for entry in text_entries]
    candidates = sum(s["plan"]["candidates"] for s in shard_stats)
    shard_dropped = {stage: collections.Counter() for stage in Stage.IMAGES}
    for stats in shard_stats:
        for stage, reasons in stats["dropped"].items():
            shard_dropped[stage].update(reasons)
    kept = candidates
    for stage in Stage.IMAGES:
        dropped = dict(sorted(shard_dropped[stage].items()))
        stages.append({"stage": stage, "in": kept, "kept": kept - sum(dropped.values()),
                       "dropped": dropped})
        kept = stages[-1]["kept"]
    written = sum(s["written"] for s in shard_stats)

    by_reason = collections.Counter()
    for entry in stages:
        by_reason.update(entry["dropped"])
    languages, opt_outs = collections.Counter(), collections.Counter()
    for stats in shard_stats:
        languages.update(stats.get("languages", {}))
        opt_outs.update(stats.get("opted_out_by_directive", {}))
    input_rows = stages[0]["in"]
    return {
        "input_rows": input_rows,
        "written": written,
        "dropped": input_rows - written,
        "stages": stages,
        "failures_by_reason": dict(by_reason.most_common()),
        "languages": dict(languages.most_common()),
        "opted_out_by_directive": dict(opt_outs.most_common()),
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
    if stats["stages"][-1]["kept"] != stats["written"]:
        problems.append(f"{stats['stages'][-1]['stage']} kept {stats['stages'][-1]['kept']} "
                        f"but the shards hold {stats['written']}")
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


DUPLICATE_KINDS = (("url", Stage.DEDUP_URL, Reason.DUPLICATE_URL),
                   ("identical_image", Stage.DEDUP_IMAGE, Reason.DUPLICATE_IMAGE),
                   ("near_duplicate", Stage.DEDUP_IMAGE, Reason.NEAR_DUPLICATE),
                   ("eval_duplicate", Stage.DEDUP_IMAGE, Reason.EVAL_DUPLICATE))


def duplicates_removed(stages: list[dict]) -> dict[str, int]:
    """Samples removed as duplicates, by kind: a repeated URL, identical image bytes, a
    near-duplicate image, a copy of an evaluation image."""
    dropped = {entry["stage"]: entry["dropped"] for entry in stages}
    return {kind: dropped.get(stage, {}).get(reason, 0) for kind, stage, reason in DUPLICATE_KINDS}


def format_stage_table(stages: list[dict]) -> list[str]:
    lines = [f"{'stage':<12} {'in':>10} {'kept':>10}  dropped"]
    for stage in stages:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in
                            sorted(stage["dropped"].items(), key=lambda item: -item[1]))
        lines.append(f"{stage['stage']:<12} {stage['in']:>10,} {stage['kept']:>10,}  "
                     f"{reasons or '-'}")
    return lines


def format_summary(stats: dict, output: str) -> str:
    lines = format_stage_table(stats["stages"])
    shards = stats["shards"]
    lines.append("")
    lines.append(f"{stats['written']:,} of {stats['input_rows']:,} candidates written in "
                 f"{shards['with_samples']} shards ({shards['tar_bytes'] / 1e6:,.1f} MB) to "
                 f"{output}/shards")
    queries = stats.get("queries", {})
    if queries:
        lines.append(f"queries: {queries['matched']:,} matched, {queries['kept']:,} kept, "
                     f"{queries['written']:,} written, {queries.get('above_cap', 0)} above the "
                     "cap (see query_counts.parquet)")
    if stats.get("opted_out_by_directive"):
        lines.append("opted out by directive: " + ", ".join(
            f"{directive} {n:,}" for directive, n in stats["opted_out_by_directive"].items()))
    if stats.get("duplicates_removed"):
        lines.append("duplicates removed: " + ", ".join(
            f"{kind.replace('_', ' ')} {n:,}" for kind, n in stats["duplicates_removed"].items()))
    excluded = stats.get("config", {}).get("excluded_images")
    if excluded:
        lines.append(f"evaluation set: {excluded['hashed']:,} images hashed, "
                     f"{excluded['unreadable']:,} unreadable, {stats['duplicates_removed']['eval_duplicate']:,} "
                     "copies removed from the corpus")
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

    def process(self, _, text_entries, shard_stats, num_shards, query_rows):
        curate_problems = text_entries["problems"]
        text_entries = text_entries["stages"]
        shard_stats = sorted(shard_stats, key=lambda s: s["shard"])
        shards_folder = storage.join(self._output, SHARDS_FOLDER)
        failures_folder = storage.join(self._output, FAILURES_FOLDER)
        storage.delete(stale_shard_files(
            storage.glob(storage.join(shards_folder, "*"))
            + storage.glob(storage.join(failures_folder, SHARD_FAILURES_PREFIX + "-*")),
            num_shards,
        ))

        sizes = {f"{shard_name(s['shard'])}.tar": s["written"] for s in shard_stats if s["written"]}
        storage.write_json_atomic(layout.sizes_path(shards_folder), sizes)

        rows = sorted(query_rows, key=lambda r: (r["query_id"], r["query"]))
        storage.write_bytes_atomic(storage.join(self._output, layout.QUERY_COUNTS_FILE),
                                   storage.encode_parquet(rows, layout.CORPUS_QUERY_COUNTS_SCHEMA))

        stats = corpus_stats(text_entries, shard_stats, num_shards)
        stats["queries"] = {
            "matched": sum(1 for r in rows if r["matched"]),
            "kept": sum(1 for r in rows if r["kept"]),
            "written": sum(1 for r in rows if r["written"]),
        }
        cap = self._run_config["cap"]["per_query_cap"]
        stats["queries"]["above_cap"] = sum(1 for r in rows if r["written"] > cap)
        stats["duplicates_removed"] = duplicates_removed(stats["stages"])
        stats["accounting_problems"] = curate_problems + check_accounting(stats)
        stats["config"] = self._run_config
        storage.write_json_atomic(storage.join(self._output, layout.STATS_FILE), stats)
        yield stats


def _query_row(query, parts):
    (curated,) = parts["curated"] or [{"query_id": -1, "query": query, "matched": 0, "kept": 0}]
    return {**curated, "written": sum(parts["written"])}


class WriteSummary(beam.PTransform):
    """Inputs (a dict): text_entries (a singleton list of curate stage entries), shard_stats,
    num_shards (a singleton), query_rows ({query_id, query, matched, kept} from curation)."""

    def __init__(self, output: str, run_config: dict):
        super().__init__()
        self._output = output
        self._run_config = run_config

    def expand(self, inputs: dict):
        p = inputs["shard_stats"].pipeline
        written = (
            inputs["shard_stats"]
            | "Written queries" >> beam.FlatMap(lambda s: s["queries"].items())
            | "Sum written" >> beam.CombinePerKey(sum)
        )
        query_rows = (
            {
                "curated": inputs["query_rows"] | "By query" >> beam.Map(
                    lambda r: (r["query"], r)),
                "written": written,
            }
            | "Join query counts" >> beam.CoGroupByKey()
            | "Query row" >> beam.MapTuple(_query_row)
        )
        return (
            p
            | "Once" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(
                FinalizeFn(self._output, self._run_config),
                text_entries=beam.pvalue.AsSingleton(inputs["text_entries"]),
                shard_stats=beam.pvalue.AsList(inputs["shard_stats"]),
                num_shards=beam.pvalue.AsSingleton(inputs["num_shards"]),
                query_rows=beam.pvalue.AsList(query_rows),
            )
        )
