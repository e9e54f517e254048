"""Stage 3: find the queries each caption contains, in one pass over the caption.

One Aho-Corasick automaton (pyahocorasick) holds every query; it is built in `DoFn.setup()` on
each worker from the query table's path, never pickled with the pipeline (a pickled automaton
of a full query table is larger than the table by far: benchmarks/RESULTS.md). A query's id is its position in the table as loaded (`queries.table`); candidates
carry sorted query ids (`query_ids`) and the strings (`queries`).

Two modes:

- ``word`` (default). A match counts when the characters just before and just after it are not
  letters, digits or "_" (where the query itself starts or ends with such a character). For
  the query "dog": "dog", "(dog)", "dog," and "dog's" match; "dogs", "dogs'" and "hotdog" do
  not (a query table lists plural forms as queries of their own, as Wikipedia word counts do).
  Case-insensitive (Unicode case folding on both sides) unless `case_sensitive` is set.
- ``metaclip``. MetaCLIP's reference semantics, exactly: the caption is padded with a space on
  each side, the punctuation , . ; : ? ! ` gets a space on each side, tabs and line breaks
  become spaces, and an entry matches when " entry " occurs in that string, case-sensitively.
  Entries are taken as stored (no normalisation, duplicates keep their own ids), so counts can
  be compared with MetaCLIP's published ones. `metaclip_reference_match` is their loop, kept
  as the definition the automaton is tested against.
"""

from __future__ import annotations

import re

import ahocorasick

from openwit.pipeline.text.config import MatchConfig
from openwit.pipeline.core.records import Reason, Stage, failure
from openwit.pipeline.text.steps import Step
from openwit.queries.table import load_query_strings

WORD_MODE = "word"
METACLIP_MODE = "metaclip"
MATCH_MODES = (WORD_MODE, METACLIP_MODE)

_METACLIP_WRAPPED = (",", ".", ";", ":", "?", "!", "`")
_METACLIP_SPACED = ("\t", "\n", "\r")


def metaclip_spacing(text: str) -> str:
    spaced = f" {text} "
    for punct in _METACLIP_WRAPPED:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in _METACLIP_SPACED:
        spaced = spaced.replace(char, " ")
    return spaced


def metaclip_reference_match(text: str, entries: list[str]) -> list[int]:
    """MetaCLIP's reference matching: a substring test per entry, every entry for every
    caption (the curate benchmark compares it with the automaton)."""
    spaced = metaclip_spacing(text)
    return [entry_id for entry_id, entry in enumerate(entries) if f" {entry} " in spaced]


# Word boundaries become a character of their own: "\x00" is put wherever a word character
# (str.isalnum() or "_", exactly what `\b` separates) meets a non-word character or an end, in
# captions and queries alike. "\x00dog\x00" then occurs in "\x00dog\x00's" but not in
# "\x00dogs\x00", so the automaton reports only whole-word matches and no hit needs a check
# in Python. A query that starts or ends with punctuation ("c++") has no marker on that side
# and so needs no boundary there. Normalisation removes control characters from captions.
_BOUNDARY = re.compile(r"\b")
_MARK = "\x00"


def mark_word_boundaries(text: str) -> str:
    return _BOUNDARY.sub(_MARK, text)


class QueryMatcher:
    """Finds the queries a text contains: `match_ids` (sorted ids) and `match` (sorted strings)."""

    def __init__(self, queries: list[str], mode: str = WORD_MODE, case_sensitive: bool = False):
        if mode not in MATCH_MODES:
            raise ValueError(f"match mode must be one of {MATCH_MODES}, not {mode!r}")
        self.queries = list(queries)
        self.mode = mode
        self._fold = None if (case_sensitive or mode == METACLIP_MODE) else str.casefold
        self._automaton = ahocorasick.Automaton()
        needles: dict[str, list[int]] = {}
        for query_id, query in enumerate(self.queries):
            if mode == METACLIP_MODE:
                needle = f" {query} "
            else:
                needle = self._fold(query) if self._fold else query
                if not needle.strip() or _MARK in needle:
                    continue
                needle = mark_word_boundaries(needle)
            # Several queries can share a needle ("US" and "us" once folded): report them all.
            needles.setdefault(needle, []).append(query_id)
        for needle, ids in needles.items():
            self._automaton.add_word(needle, (len(needle), tuple(ids)))
        self._automaton.make_automaton()
        self.size = len(self._automaton)

    def match_ids(self, text: str) -> list[int]:
        if self.mode == METACLIP_MODE:
            return self._match_metaclip(text)
        return self._match_words(text)

    def match(self, text: str) -> list[str]:
        return sorted({self.queries[i] for i in self.match_ids(text)})

    def _match_metaclip(self, text: str) -> list[int]:
        if not self.size:
            return []
        found: set[int] = set()
        for _, (_, ids) in self._automaton.iter(metaclip_spacing(text)):
            found.update(ids)
        return sorted(found)

    def _match_words(self, text: str) -> list[int]:
        if not self.size or not text:
            return []
        haystack = mark_word_boundaries(self._fold(text) if self._fold else text)
        found: set[int] = set()
        for _, (_, ids) in self._automaton.iter(haystack):
            found.update(ids)
        return sorted(found)


def load_matcher(config: MatchConfig) -> QueryMatcher:
    exact = config.mode == METACLIP_MODE
    queries = load_query_strings(config.queries, exact=exact)
    return QueryMatcher(queries, config.mode, config.case_sensitive)


class MatchStep(Step):
    """Survivors carry `query_ids`. Without a query table every caption passes with none."""

    stage = Stage.MATCH

    def __init__(self, config: MatchConfig):
        self._config = config

    def setup(self):
        self._matcher = load_matcher(self._config) if self._config.queries is not None else None

    def run(self, candidates, side):
        if self._matcher is None:
            return [{**candidate, "query_ids": []} for candidate in candidates], []
        match_ids = self._matcher.match_ids
        kept, failures = [], []
        for candidate in candidates:
            ids = match_ids(candidate["caption"])
            if ids:
                kept.append({**candidate, "query_ids": ids})
            else:
                failures.append(failure(candidate, Stage.MATCH, Reason.NO_QUERY_MATCH))
        return kept, failures
