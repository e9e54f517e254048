"""Stage 3: keep captions that contain at least one query, on word boundaries.

One Aho-Corasick automaton (pyahocorasick) holds every query; it is built in `DoFn.setup()` on
each worker from the query table's path, never pickled with the pipeline (500k queries pickle
to ~160 MB).

Word boundaries: a match counts when the characters just before and just after it are not
letters, digits or "_". So for the query "dog": "dog", "(dog)", "dog," and "dog's" match;
"dogs", "dogs'" and "hotdog" do not (a query table lists plural forms as queries of their own,
as Wikipedia word counts do). Matching is case-insensitive (Unicode case folding on both sides)
unless `case_sensitive` is set.
"""

from __future__ import annotations

import ahocorasick
import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import MatchConfig
from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, tagged_failure
from queries.table import load_query_strings


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class QueryMatcher:
    """Finds the queries a text contains, on word boundaries."""

    def __init__(self, queries: list[str], case_sensitive: bool = False):
        self._fold = (lambda s: s) if case_sensitive else str.casefold
        self._automaton = ahocorasick.Automaton()
        for query in queries:
            needle = self._fold(query)
            if not needle.strip():
                continue
            # Several queries can fold to one needle ("US" and "us"): report them all.
            existing = self._automaton.get(needle, None)
            self._automaton.add_word(needle, (len(needle), (*existing[1], query) if existing
                                              else (query,)))
        self._automaton.make_automaton()
        self.size = len(self._automaton)

    def match(self, text: str) -> list[str]:
        haystack = self._fold(text)
        last = len(haystack) - 1
        found: set[str] = set()
        for end, (length, queries) in self._automaton.iter(haystack):
            start = end - length + 1
            if start > 0 and _is_word_char(haystack[start - 1]) and _is_word_char(haystack[start]):
                continue
            if end < last and _is_word_char(haystack[end + 1]) and _is_word_char(haystack[end]):
                continue
            found.update(queries)
        return sorted(found)


class MatchQueriesFn(beam.DoFn):
    def __init__(self, config: MatchConfig):
        self._config = config

    def setup(self):
        queries = load_query_strings(self._config.queries)
        self._matcher = QueryMatcher(queries, self._config.case_sensitive)
        self._matches = Metrics.counter("openwit", "match.matched_queries")

    def process(self, candidate):
        queries = self._matcher.match(candidate["caption"])
        if not queries:
            yield tagged_failure(candidate, Stage.MATCH, Reason.NO_QUERY_MATCH)
            return
        self._matches.inc(len(queries))
        yield {**candidate, "queries": queries}


class MatchQueries(beam.PTransform):
    """Candidates -> StageResult; survivors carry `queries`. Without a table, all pass."""

    def __init__(self, config: MatchConfig):
        super().__init__()
        self._config = config

    def expand(self, candidates):
        if self._config.queries is None:
            kept = candidates | "No query table" >> beam.Map(lambda c: {**c, "queries": []})
            failed = candidates.pipeline | "No match failures" >> beam.Create([])
            return StageResult(kept, failed)
        result = candidates | "Match" >> beam.ParDo(MatchQueriesFn(self._config)).with_outputs(
            FAILED, main=KEPT
        )
        return StageResult(result[KEPT], result[FAILED])
