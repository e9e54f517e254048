"""The row every query source emits, and how rows for the same query merge into one.

A source row is a `SourceRow` (a named tuple: a fraction of a dict's memory, and the whole
table passes through one worker at the end).

Rows merge on `merge_key`: NFC, whitespace collapsed and, unless case-sensitive, case-folded,
so "Paris" (title), "paris" (unigram) and "PARIS" (user) are one query. The merged row shows
the form of the most specific source (user, title, wordnet, bigram, unigram, in that order).
"""

from __future__ import annotations

import typing
import unicodedata


STATS = "stats"  # tag of the (name, count) pairs summed into stats.json


class Source:
    USER = "user"
    TITLE = "title"
    WORDNET = "wordnet"
    BIGRAM = "bigram"
    UNIGRAM = "unigram"

    ORDER = (USER, TITLE, WORDNET, BIGRAM, UNIGRAM)  # whose spelling a merged row shows


class Dropped:
    STOP_LIST = "stop_list"
    NO_WORD_CHARACTER = "no_word_character"  # "!", "--", emoji: MetaCLIP dropped punctuation


STATISTICS = ("count", "pmi", "views", "zipf")
MERGED_COLUMNS = ("query", "sources", *STATISTICS)  # the table's columns after `id`


class SourceRow(typing.NamedTuple):
    query: str  # as the source gives it ("Paris", "new york", "hot dog")
    source: str  # one of Source.ORDER
    count: int | None = None  # corpus count of a Wikipedia unigram or bigram
    pmi: float | None = None  # log2 PMI of a bigram
    views: int | None = None  # page views of a title (None without a page-view file)
    zipf: float | None = None  # wordfreq's Zipf frequency of a word from its list


def query_row(query: str, source: str, *, count=None, pmi=None, views=None,
              zipf=None) -> SourceRow:
    return SourceRow(query, source, count, pmi, views, zipf)


def stat(name: str, value: int = 1) -> tuple[str, int]:
    """One contribution to a summed counter in stats.json."""
    return name, value


def clean_query(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def merge_key(query: str, case_sensitive: bool) -> str:
    cleaned = clean_query(query)
    return cleaned if case_sensitive else cleaned.casefold()


def has_word_character(query: str) -> bool:
    return any(ch.isalnum() for ch in query)


def merge_rows(rows: list[SourceRow]) -> tuple:
    """One table row, as a tuple of MERGED_COLUMNS, from every source row of one merge key.

    A tuple rather than a dict: the whole table passes through one worker at the end, and a
    tuple costs a fraction of a dict's memory there.
    """
    rows = sorted(rows, key=lambda r: (Source.ORDER.index(r.source), clean_query(r.query)))
    sources = tuple(sorted({r.source for r in rows}, key=Source.ORDER.index))
    statistics = []
    for name in STATISTICS:
        values = [getattr(r, name) for r in rows if getattr(r, name) is not None]
        statistics.append(max(values) if values else None)
    return (clean_query(rows[0].query), sources, *statistics)
