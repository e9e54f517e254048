"""Query sources that are word lists: wordfreq's frequency list (the offline stand-in for
Wikipedia unigram counts) and the user's own additions and stop lists."""

from __future__ import annotations

import math

import apache_beam as beam

from openwit.queries.config import WordfreqConfig
from openwit.queries.rows import Source, query_row, stat
from openwit.queries.table import load_query_strings


def zipf(frequency: float) -> float:
    """wordfreq's Zipf scale: log10 of occurrences per billion words."""
    return math.log10(frequency * 1e9)


def wordfreq_words(config: WordfreqConfig):
    """(word, zipf) for every word of wordfreq's large list at or above the threshold."""
    import wordfreq  # a large word list: loaded on the worker that needs it

    for word, frequency in wordfreq.get_frequency_dict(config.language, "large").items():
        value = zipf(frequency)
        if value >= config.min_zipf:
            yield word, value


class WordfreqQueries(beam.PTransform):
    """-> (query rows, stats): unigrams from wordfreq (a blend of Wikipedia, subtitles, web
    text and other sources, so a Zipf threshold only approximates a Wikipedia count)."""

    def __init__(self, config: WordfreqConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        rows = (
            pbegin
            | "Wordfreq list" >> beam.Create([self._config])
            | "Frequent words" >> beam.FlatMap(wordfreq_words)
            | "Wordfreq rows" >> beam.MapTuple(
                lambda word, value: query_row(word, Source.UNIGRAM, zipf=round(value, 3)))
        )
        stats = rows | "Wordfreq stat" >> beam.Map(lambda _: stat("wordfreq.words"))
        return rows, stats


class ReadQueryLists(beam.PTransform):
    """Query list files (text or parquet, any Beam filesystem) -> their query strings."""

    def __init__(self, paths: tuple[str, ...]):
        super().__init__()
        self._paths = paths

    def expand(self, pbegin):
        return (
            pbegin
            | "List files" >> beam.Create(list(self._paths))
            | "Read queries" >> beam.FlatMap(load_query_strings)
        )


class UserQueries(beam.PTransform):
    def __init__(self, paths: tuple[str, ...]):
        super().__init__()
        self._paths = paths

    def expand(self, pbegin):
        rows = (pbegin | "Read additions" >> ReadQueryLists(self._paths)
                | "User rows" >> beam.Map(lambda q: query_row(q, Source.USER)))
        stats = rows | "User stat" >> beam.Map(lambda _: stat("user.additions"))
        return rows, stats
