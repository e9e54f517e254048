"""Queries from a Wikipedia pages-articles dump: frequent words, high-PMI bigrams, article titles.

    dump files -> <page> elements (split by byte range when uncompressed)
               -> parse (title, namespace, redirect, text)        malformed pages: counted
               -> articles: strip markup -> token runs -> local counts -> CombinePerKey(sum)
               -> unigrams >= min count; bigrams >= min count scored by PMI (two joins with
                  the unigram counts, the token total as a side input)
               -> titles of articles (namespace 0, not redirects), filtered by page views

The dump is streamed: a worker holds one page at a time plus its local n-gram counts, which it
hands to Beam's combine at the end of a bundle or when they pass `max_cached_keys` entries.
Memory therefore follows the number of distinct n-grams, not the size of the dump.

PMI is nltk's (and so MetaCLIP's): log2(count(a b) * N / (count(a) * count(b))), N the number
of tokens. No bigram can score above log2(N), so the paper's threshold of 30 needs a corpus of
over a billion words; a small dump needs a lower `--min-bigram-pmi`.
"""

from __future__ import annotations

import collections
import math
import re
import typing
import xml.etree.ElementTree as ElementTree

import apache_beam as beam
from apache_beam.io.filebasedsource import FileBasedSource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from queries.config import TitleConfig, WikipediaConfig
from queries.rows import STATS, Source, query_row, stat
from queries.wikitext import bigrams, strip_markup, token_runs

ARTICLE_NAMESPACE = 0
UNIGRAMS, BIGRAMS, TOKENS, ARTICLES = "unigrams", "bigrams", "tokens", "articles"
_DISAMBIGUATION = re.compile(r"\s+\([^()]*\)$")


class WikipediaDumpSource(FileBasedSource):
    """The `<page>...</page>` elements of MediaWiki XML dumps, as bytes.

    Uncompressed dumps split by byte range: a page belongs to the range its `<page>` line
    starts in. Compressed ones (.bz2, .gz) are read whole, one worker per file, so multi-part
    dumps (enwiki's pages-articles1..27) parallelise by part.
    """

    def __init__(self, pattern: str):
        super().__init__(pattern, compression_type=CompressionTypes.AUTO, splittable=True)

    def read_records(self, file_name, range_tracker):
        start = range_tracker.start_position()
        with self.open_file(file_name) as stream:
            position = 0
            if start > 0:
                # Step back one byte so a page starting exactly at `start` is not skipped.
                stream.seek(start - 1)
                position = start - 1 + len(stream.readline())
            page_lines = None
            while True:
                line = stream.readline()
                if not line:
                    break
                line_start, position = position, position + len(line)
                stripped = line.strip()
                if page_lines is None:
                    if stripped == b"<page>":
                        if not range_tracker.try_claim(line_start):
                            return
                        page_lines = [line]
                    continue
                page_lines.append(line)
                if stripped == b"</page>":
                    yield b"".join(page_lines)
                    page_lines = None
            if page_lines is not None:
                yield b"".join(page_lines)  # a truncated dump: parsing fails and is counted


def parse_page(page_xml: bytes) -> dict:
    """title, ns, redirect, text of one `<page>` element; ValueError(reason) when unusable."""
    try:
        page = ElementTree.fromstring(page_xml)
    except ElementTree.ParseError as err:
        raise ValueError("malformed_xml") from err
    title = (page.findtext("title") or "").strip()
    if not title:
        raise ValueError("missing_title")
    namespace = (page.findtext("ns") or "").strip()
    if not namespace.lstrip("-").isdigit():
        raise ValueError("missing_namespace")
    return {
        "title": title,
        "ns": int(namespace),
        "redirect": page.find("redirect") is not None,
        "text": page.findtext("revision/text") or "",
    }


class ParsePagesFn(beam.DoFn):
    def setup(self):
        self._pages = Metrics.counter("openwit", "queries.wikipedia.pages")

    def process(self, page_xml: bytes):
        try:
            page = parse_page(page_xml)
        except ValueError as err:
            yield TaggedOutput(STATS, stat(f"wikipedia.failed.{err}"))
            return
        self._pages.inc()
        yield page


class CountNgramsFn(beam.DoFn):
    """Counts unigrams and bigrams of article prose, combining locally before emitting."""

    def __init__(self, case_sensitive: bool, max_cached_keys: int):
        self._case_sensitive = case_sensitive
        self._max_cached_keys = max_cached_keys

    def start_bundle(self):
        self._unigrams = collections.Counter()
        self._bigrams = collections.Counter()
        self._tokens = 0
        self._articles = 0

    def process(self, page: dict):
        if page["ns"] != ARTICLE_NAMESPACE or page["redirect"]:
            return
        text = strip_markup(page["text"])
        if not self._case_sensitive:
            text = text.casefold()
        for run in token_runs(text):
            self._unigrams.update(run)
            self._bigrams.update(bigrams(run))
            self._tokens += len(run)
        self._articles += 1
        if len(self._unigrams) + len(self._bigrams) >= self._max_cached_keys:
            yield from self._flush()

    def finish_bundle(self):
        for output in self._flush():
            tag, value = (output.tag, output.value) if isinstance(output, TaggedOutput) else (
                None, output)
            windowed = GlobalWindows.windowed_value(value)
            yield windowed if tag is None else TaggedOutput(tag, windowed)

    def _flush(self):
        yield from self._unigrams.items()
        for bigram, count in self._bigrams.items():
            yield TaggedOutput(BIGRAMS, (bigram, count))
        yield TaggedOutput(TOKENS, self._tokens)
        yield TaggedOutput(ARTICLES, self._articles)
        self.start_bundle()


class NgramCounts(typing.NamedTuple):
    unigrams: beam.PCollection  # (token, count), one per distinct token
    bigrams: beam.PCollection  # ("a b", count), one per distinct bigram
    tokens: beam.PCollection  # one int: the number of tokens (N in PMI)
    stats: beam.PCollection  # (name, value) pairs


class CountWikipediaNgrams(beam.PTransform):
    """Parsed pages -> corpus-wide unigram and bigram counts of the articles' prose."""

    def __init__(self, config: WikipediaConfig):
        super().__init__()
        self._config = config

    def expand(self, pages):
        local = pages | "Count locally" >> beam.ParDo(
            CountNgramsFn(self._config.case_sensitive, self._config.max_cached_keys)
        ).with_outputs(BIGRAMS, TOKENS, ARTICLES, main=UNIGRAMS)
        unigrams = local[UNIGRAMS] | "Sum unigrams" >> beam.CombinePerKey(sum)
        bigram_counts = local[BIGRAMS] | "Sum bigrams" >> beam.CombinePerKey(sum)
        tokens = local[TOKENS] | "Sum tokens" >> beam.CombineGlobally(sum)
        articles = local[ARTICLES] | "Sum articles" >> beam.CombineGlobally(sum)
        stats = (
            tokens | "Token stat" >> beam.Map(lambda n: ("wikipedia.tokens", n)),
            articles | "Article stat" >> beam.Map(lambda n: ("wikipedia.articles", n)),
            unigrams | "Distinct unigrams" >> beam.combiners.Count.Globally()
            | "Unigram stat" >> beam.Map(lambda n: ("wikipedia.distinct_unigrams", n)),
            bigram_counts | "Distinct bigrams" >> beam.combiners.Count.Globally()
            | "Bigram stat" >> beam.Map(lambda n: ("wikipedia.distinct_bigrams", n)),
        ) | "Ngram stats" >> beam.Flatten()
        return NgramCounts(unigrams, bigram_counts, tokens, stats)


def pmi(bigram_count: int, first_count: int, second_count: int, tokens: int) -> float:
    """log2 pointwise mutual information, as nltk's BigramAssocMeasures.pmi computes it."""
    return math.log2(bigram_count * tokens) - math.log2(first_count * second_count)


def _attach_first_count(word_and_groups):
    _, groups = word_and_groups
    counts = list(groups["unigram"])
    if not counts:
        return
    for bigram, count in groups["bigram"]:
        second = bigram.split(" ", 1)[1]
        yield second, (bigram, count, counts[0])


def _score_with_second_count(word_and_groups, tokens: int, min_pmi: float):
    _, groups = word_and_groups
    counts = list(groups["unigram"])
    if not counts:
        return
    for bigram, count, first_count in groups["bigram"]:
        score = pmi(count, first_count, counts[0], tokens)
        if score >= min_pmi:
            yield query_row(bigram, Source.BIGRAM, count=count, pmi=round(score, 4))


class BigramQueries(beam.PTransform):
    """Bigram counts -> query rows for bigrams with count and PMI at or above the thresholds.

    Each bigram meets the counts of its two words in two CoGroupByKey joins, so no worker
    holds the vocabulary (English Wikipedia has millions of distinct words).
    """

    def __init__(self, config: WikipediaConfig, counts: NgramCounts):
        super().__init__()
        self._config = config
        self._counts = counts

    def expand(self, bigram_counts):
        min_count = self._config.min_bigram_count
        by_first = (
            bigram_counts
            | "At least min count" >> beam.Filter(lambda kv: kv[1] >= min_count)
            | "Key by first word" >> beam.Map(lambda kv: (kv[0].split(" ", 1)[0], kv))
        )
        by_second = (
            {"bigram": by_first, "unigram": self._counts.unigrams}
            | "Join first word" >> beam.CoGroupByKey()
            | "Attach first count" >> beam.FlatMap(_attach_first_count)
        )
        return (
            {"bigram": by_second, "unigram": self._counts.unigrams}
            | "Join second word" >> beam.CoGroupByKey()
            | "Score PMI" >> beam.FlatMap(
                _score_with_second_count, tokens=AsSingleton(self._counts.tokens),
                min_pmi=self._config.min_bigram_pmi)
        )


def title_query(title: str, keep_disambiguation: bool) -> str:
    """The query an article title gives: underscores as spaces, "(planet)" dropped."""
    title = " ".join(title.replace("_", " ").split())
    if not keep_disambiguation:
        shorter = _DISAMBIGUATION.sub("", title)
        title = shorter or title
    return title


def _title_rows(title_and_groups, config: TitleConfig, filter_by_views: bool):
    title, groups = title_and_groups
    if not list(groups["article"]):
        return
    views = sum(groups["views"]) if filter_by_views else None
    if filter_by_views and views < config.min_views:
        return
    yield query_row(title_query(title, config.keep_disambiguation), Source.TITLE, views=views)


class TitleQueries(beam.PTransform):
    """Parsed pages (+ views per title, when given) -> query rows of article titles."""

    def __init__(self, config: TitleConfig, views=None):
        super().__init__()
        self._config = config
        self._views = views

    def expand(self, pages):
        articles = (
            pages
            | "Articles" >> beam.Filter(
                lambda p: p["ns"] == ARTICLE_NAMESPACE and not p["redirect"])
            | "Title" >> beam.Map(lambda p: (p["title"], True))
        )
        filter_by_views = self._views is not None
        views = (self._views if filter_by_views
                 else pages.pipeline | "No views" >> beam.Create([]))
        return (
            {"article": articles, "views": views}
            | "Join views" >> beam.CoGroupByKey()
            | "Title rows" >> beam.FlatMap(_title_rows, config=self._config,
                                           filter_by_views=filter_by_views)
        )


class WikipediaQueries(beam.PTransform):
    """Dump paths -> (query rows, stats): unigrams, bigrams and titles of one or more dumps."""

    def __init__(self, config: WikipediaConfig, titles: TitleConfig, views=None):
        super().__init__()
        self._config = config
        self._titles = titles
        self._views = views

    def expand(self, pbegin):
        config = self._config
        raw = [
            pbegin | f"Read dump {i}" >> beam.io.Read(WikipediaDumpSource(pattern))
            for i, pattern in enumerate(config.dumps)
        ] | "All dump pages" >> beam.Flatten()
        parsed = raw | "Parse pages" >> beam.ParDo(ParsePagesFn()).with_outputs(
            STATS, main="pages")
        pages = parsed["pages"]
        counts = pages | "Count ngrams" >> CountWikipediaNgrams(config)
        min_unigrams = config.min_unigram_count
        unigram_rows = (
            counts.unigrams
            | "Frequent unigrams" >> beam.Filter(lambda kv: kv[1] >= min_unigrams)
            | "Unigram rows" >> beam.MapTuple(
                lambda word, n: query_row(word, Source.UNIGRAM, count=n))
        )
        bigram_rows = counts.bigrams | "Bigrams by PMI" >> BigramQueries(config, counts)
        title_rows = pages | "Titles" >> TitleQueries(self._titles, self._views)
        page_stats = (
            pages | "Page stat" >> beam.Map(lambda _: ("wikipedia.pages", 1)),
            parsed[STATS],
            counts.stats,
        ) | "Wikipedia stats" >> beam.Flatten()
        rows = (unigram_rows, bigram_rows, title_rows) | "Wikipedia rows" >> beam.Flatten()
        return rows, page_stats
