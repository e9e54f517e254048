"""Queries from a Wikipedia pages-articles dump: frequent words, high-PMI bigrams, article titles.

    pass 1: dump -> <page>s (split by byte range when uncompressed) -> parse  (bad pages counted)
            -> article prose -> token runs -> word counts, N (tokens)  -> unigrams >= min count
            -> article titles (namespace 0, not redirects), filtered by page views
    pass 2: dump again -> bigrams whose two words are both eligible (see below) -> counts
            -> PMI from two joins with the word counts -> bigrams >= min PMI

PMI is nltk's (and so MetaCLIP's): log2(c(ab) * N / (c(a) * c(b))). Because c(ab) is at most
min(c(a), c(b)), PMI <= log2(N / max(c(a), c(b))): a bigram can only reach the threshold T if
both its words occur at most N / 2^T times (and at least the minimum bigram count). Pass 2
counts only those bigrams, which is exact and keeps the bigram table small: with the paper's
T = 30 on English Wikipedia's ~4 billion words, only words seen at most 3 times qualify. No
bigram can score above log2(N) at all, so a small dump needs a lower `--min-bigram-pmi`.

The dump is streamed: a worker holds one page and its local counts, which it hands to Beam at
the end of a bundle or when they reach `max_cached_keys` entries. Memory follows the number of
distinct words (and eligible bigrams), not the size of the dump.
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
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from openwit.queries.config import TitleConfig, WikipediaConfig
from openwit.queries.rows import STATS, Source, query_row, stat
from openwit.queries.wikitext import strip_markup, token_runs, tokens

ARTICLE_NAMESPACE = 0
UNIGRAMS, TOKENS, ARTICLES = "unigrams", "tokens", "articles"
PAGES = "pages"
_DISAMBIGUATION = re.compile(r"\s+\([^()]*\)$")


class WikipediaDumpSource(FileBasedSource):
    """The `<page>...</page>` elements of MediaWiki XML dumps, as bytes.

    Uncompressed dumps split by byte range: a page belongs to the range its `<page>` line
    starts in. Compressed ones (.bz2, .gz) are read whole, one worker per file, so multi-part
    dumps (enwiki's pages-articles1..27) parallelise by part.
    """

    def __init__(self, pattern: str):
        # validate=False: the launcher lists the patterns itself (one line when one matches
        # nothing), and a dry run must list nothing.
        super().__init__(pattern, compression_type=CompressionTypes.AUTO, splittable=True,
                         validate=False)

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


class ReadWikipediaPages(beam.PTransform):
    """Dump paths -> tagged outputs: PAGES (parsed pages) and STATS (unparseable pages)."""

    def __init__(self, dumps: tuple[str, ...]):
        super().__init__()
        self._dumps = dumps

    def expand(self, pbegin):
        raw = [
            pbegin | f"Read dump {i}" >> beam.io.Read(WikipediaDumpSource(pattern))
            for i, pattern in enumerate(self._dumps)
        ] | "All pages" >> beam.Flatten()
        return raw | "Parse pages" >> beam.ParDo(ParsePagesFn()).with_outputs(STATS, main=PAGES)


def article_prose(page: dict, case_sensitive: bool) -> str | None:
    """The prose of an article (namespace 0, not a redirect), case-folded unless asked not to."""
    if page["ns"] != ARTICLE_NAMESPACE or page["redirect"]:
        return None
    text = strip_markup(page["text"])
    return text if case_sensitive else text.casefold()


class _LocalCountsFn(beam.DoFn):
    """Sums counts locally and hands them on at the end of a bundle, or earlier when the local
    table reaches `max_cached_keys` entries (Beam then adds up the partial sums)."""

    def __init__(self, case_sensitive: bool, max_cached_keys: int):
        self._case_sensitive = case_sensitive
        self._max_cached_keys = max_cached_keys

    def start_bundle(self):
        self._counts = collections.Counter()

    def finish_bundle(self):
        # finish_bundle must name each output's window; a WindowedValue built directly is
        # several times cheaper than GlobalWindows.windowed_value.
        window, timestamp = (GlobalWindow(),), MIN_TIMESTAMP
        for output in self._flush():
            if isinstance(output, TaggedOutput):
                yield TaggedOutput(output.tag, WindowedValue(output.value, timestamp, window))
            else:
                yield WindowedValue(output, timestamp, window)

    def _flush_if_full(self):
        if len(self._counts) >= self._max_cached_keys:
            yield from self._flush()

    def _flush(self):
        yield from self._counts.items()
        yield from self._totals()
        self.start_bundle()

    def _totals(self):
        """Tagged outputs a subclass sums beside its counts."""
        return ()


class CountUnigramsFn(_LocalCountsFn):
    """First pass: word counts, the number of tokens (N) and of articles."""

    def start_bundle(self):
        super().start_bundle()
        self._tokens = 0
        self._articles = 0

    def _totals(self):
        yield TaggedOutput(TOKENS, self._tokens)
        yield TaggedOutput(ARTICLES, self._articles)

    def process(self, page: dict):
        prose = article_prose(page, self._case_sensitive)
        if prose is None:
            return
        words = tokens(prose)
        self._counts.update(words)
        self._tokens += len(words)
        self._articles += 1
        yield from self._flush_if_full()


class WordSet(typing.NamedTuple):
    """Words eligible for bigrams, stored as whichever of the set or its complement is smaller."""

    words: frozenset
    listed_are_eligible: bool

    def __contains__(self, word) -> bool:
        return (word in self.words) == self.listed_are_eligible


class CountBigramsFn(_LocalCountsFn):
    """Second pass: counts of the bigrams whose two words are both eligible."""

    def process(self, page: dict, eligible: WordSet):
        prose = article_prose(page, self._case_sensitive)
        if prose is None:
            return
        listed, listed_are_eligible = eligible
        counts = self._counts
        for run in token_runs(prose):
            previous = None  # the last token, when it was eligible
            for word in run:
                if (word in listed) == listed_are_eligible:
                    if previous is not None:
                        counts[f"{previous} {word}"] += 1
                    previous = word
                else:
                    previous = None
        yield from self._flush_if_full()


def max_word_count_for_pmi(tokens: int, min_pmi: float) -> int:
    """The largest word count a bigram's words can have and still reach `min_pmi`.

    c(ab) <= min(c(a), c(b)), so PMI = log2(c(ab) N / (c(a) c(b))) <= log2(N / max(c(a), c(b))):
    a word seen more than N / 2^min_pmi times is in no bigram that reaches the threshold.
    """
    return math.floor(tokens / 2.0 ** min_pmi * (1 + 1e-9))


def eligible_word_set(groups) -> WordSet:
    """From [(eligible?, [words])] groups, the smaller side as a WordSet."""
    by_flag = {flag: frozenset(words) for flag, words in groups}
    eligible, ineligible = by_flag.get(True, frozenset()), by_flag.get(False, frozenset())
    if len(eligible) <= len(ineligible):
        return WordSet(eligible, True)
    return WordSet(ineligible, False)


class SumPerKey(beam.PTransform):
    """(key, partial count) -> (key, total). Workers already summed their share locally, so a
    key arrives about once per flush: a plain GroupByKey spares the lifted combine's second
    in-memory table of every key."""

    def expand(self, pairs):
        return (pairs | "Group" >> beam.GroupByKey()
                | "Sum" >> beam.MapTuple(lambda key, counts: (key, sum(counts))))


class UnigramCounts(typing.NamedTuple):
    unigrams: beam.PCollection  # (token, count), one per distinct token
    tokens: beam.PCollection  # one int: the number of tokens (N in PMI)
    stats: beam.PCollection  # (name, value) pairs


class CountWikipediaUnigrams(beam.PTransform):
    """Parsed pages -> corpus-wide word counts of the articles' prose."""

    def __init__(self, config: WikipediaConfig):
        super().__init__()
        self._config = config

    def expand(self, pages):
        local = pages | "Count locally" >> beam.ParDo(
            CountUnigramsFn(self._config.case_sensitive, self._config.max_cached_keys)
        ).with_outputs(TOKENS, ARTICLES, main=UNIGRAMS)
        unigrams = local[UNIGRAMS] | "Sum unigrams" >> SumPerKey()
        tokens = local[TOKENS] | "Sum tokens" >> beam.CombineGlobally(sum)
        stats = (
            tokens | "Token stat" >> beam.Map(lambda n: ("wikipedia.tokens", n)),
            local[ARTICLES] | "Article stat" >> beam.Map(lambda n: ("wikipedia.articles", n)),
            unigrams | "Unigram stat" >> beam.Map(lambda _: ("wikipedia.distinct_unigrams", 1)),
        ) | "Unigram stats" >> beam.Flatten()
        return UnigramCounts(unigrams, tokens, stats)


class CountEligibleBigrams(beam.PTransform):
    """Second pass over the dump: counts of bigrams that can still reach the PMI threshold."""

    def __init__(self, config: WikipediaConfig, counts: UnigramCounts):
        super().__init__()
        self._config = config
        self._counts = counts

    def expand(self, pages):
        config = self._config
        max_count = self._counts.tokens | "Max word count" >> beam.Map(
            max_word_count_for_pmi, min_pmi=config.min_bigram_pmi)
        min_count = config.min_bigram_count
        flagged = self._counts.unigrams | "Flag eligible words" >> beam.Map(
            lambda kv, most: (min_count <= kv[1] <= most, kv[0]), most=AsSingleton(max_count))
        word_set = (
            flagged
            | "Group by eligibility" >> beam.GroupByKey()
            | "Both groups" >> beam.combiners.ToList()
            | "Smaller side" >> beam.Map(eligible_word_set)
        )
        bigram_counts = (
            pages
            | "Count locally" >> beam.ParDo(
                CountBigramsFn(config.case_sensitive, config.max_cached_keys),
                eligible=AsSingleton(word_set))
            | "Sum bigrams" >> SumPerKey()
        )
        stats = (
            bigram_counts | "Bigram stat" >> beam.Map(lambda _: ("wikipedia.bigrams_scored", 1)),
            flagged | "Eligible stat" >> beam.Filter(lambda kv: kv[0])
            | "Count eligible" >> beam.Map(lambda _: ("wikipedia.words_eligible_for_bigrams", 1)),
        ) | "Bigram stats" >> beam.Flatten()
        return bigram_counts, stats


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

    def __init__(self, config: WikipediaConfig, counts: UnigramCounts):
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
        # Pass 1: words, the token count and titles.
        first = pbegin | "First pass" >> ReadWikipediaPages(config.dumps)
        pages = first[PAGES]
        counts = pages | "Count unigrams" >> CountWikipediaUnigrams(config)
        min_unigrams = config.min_unigram_count
        unigram_rows = (
            counts.unigrams
            | "Frequent unigrams" >> beam.Filter(lambda kv: kv[1] >= min_unigrams)
            | "Unigram rows" >> beam.MapTuple(
                lambda word, n: query_row(word, Source.UNIGRAM, count=n))
        )
        title_rows = pages | "Titles" >> TitleQueries(self._titles, self._views)
        # Pass 2 reads the dump again rather than keeping pass 1's pages: a stage that waits
        # for a side input cannot fuse with the read, and the runner would hold every page.
        second = pbegin | "Second pass" >> ReadWikipediaPages(config.dumps)
        bigram_counts, bigram_stats = second[PAGES] | "Count bigrams" >> CountEligibleBigrams(
            config, counts)
        bigram_rows = bigram_counts | "Bigrams by PMI" >> BigramQueries(config, counts)
        page_stats = (
            pages | "Page stat" >> beam.Map(lambda _: ("wikipedia.pages", 1)),
            first[STATS],
            counts.stats,
            bigram_stats,
        ) | "Wikipedia stats" >> beam.Flatten()
        rows = (unigram_rows, bigram_rows, title_rows) | "Wikipedia rows" >> beam.Flatten()
        return rows, page_stats
