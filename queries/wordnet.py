"""Synset lemmas read straight from the WordNet database files (data.noun, data.verb, ...).

A data line is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...`,
w_cnt in hexadecimal; lines starting with two spaces are the licence header. Lemmas use `_`
for spaces and adjectives may carry a syntactic marker ("galore(ip)"), which is dropped.
Reading the files directly (no nltk) needs nothing but the files: Debian's `wordnet-base`
installs WordNet 3.0 under /usr/share/wordnet.
"""

from __future__ import annotations

import re

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from openwit.pipeline.core import storage
from openwit.queries.config import WordNetConfig
from openwit.queries.rows import STATS, Source, query_row, stat

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def synset_lemmas(line: str) -> list[str]:
    """The lemmas of one data line, spaces for underscores; ValueError when malformed."""
    fields = line.split(" ")
    try:
        count = int(fields[3], 16)
    except (IndexError, ValueError) as err:
        raise ValueError("malformed_line") from err
    words = fields[4:4 + 2 * count:2]
    if count < 1 or len(words) < count:
        raise ValueError("malformed_line")
    return [_ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in words]


class ReadLemmasFn(beam.DoFn):
    def __init__(self, config: WordNetConfig):
        self._config = config

    def process(self, path: str):
        text = storage.read_bytes(path).decode("utf-8", errors="replace")
        for line in text.splitlines():
            if not line.strip() or line.startswith("  "):
                continue
            try:
                lemmas = synset_lemmas(line)
            except ValueError as err:
                yield TaggedOutput(STATS, stat(f"wordnet.failed.{err}"))
                continue
            yield TaggedOutput(STATS, stat("wordnet.synsets"))
            if self._config.lemmas == "head":
                lemmas = lemmas[:1]
            for lemma in lemmas:
                yield query_row(lemma, Source.WORDNET)


class WordNetQueries(beam.PTransform):
    """-> (query rows, stats): every synset lemma of the WordNet folder's four data files."""

    def __init__(self, config: WordNetConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        paths = [storage.join(self._config.folder, name) for name in DATA_FILES]
        result = (
            pbegin
            | "WordNet files" >> beam.Create(paths)
            | "Read lemmas" >> beam.ParDo(ReadLemmasFn(self._config)).with_outputs(
                STATS, main="rows")
        )
        return result["rows"], result[STATS]
