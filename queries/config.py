"""`openwit queries` settings: one frozen dataclass per source, its flags, and the conversion
from parsed flags to `QueriesConfig`.

Every threshold defaults to the value the CLIP paper / MetaCLIP used (see the README's query
table section for where each comes from).
"""

from __future__ import annotations

import dataclasses
import os

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_flag, add_output_flag, parse_flag
from openwit.pipeline.core.layout import DEFAULT_QUERY_TABLE_FOLDER

DEFAULT_WORDNET_FOLDER = "/usr/share/wordnet"  # Debian's wordnet-base (WordNet 3.0)
DEFAULT_OUTPUT = DEFAULT_QUERY_TABLE_FOLDER
# wordfreq's Zipf value is log10(occurrences per billion words). English Wikipedia holds about
# 4 billion words, so "at least 100 occurrences" is 100 / 4 = 25 per billion: Zipf 1.4.
WIKIPEDIA_WORDS = 4.0e9
DEFAULT_WORDFREQ_MIN_ZIPF = 1.4


@dataclasses.dataclass(frozen=True)
class WikipediaConfig:
    dumps: tuple[str, ...] = ()  # pages-articles XML, plain or .bz2/.gz; files or globs
    min_unigram_count: int = 100  # MetaCLIP: words occurring at least 100 times
    min_bigram_count: int = 1  # MetaCLIP scored every bigram its counts held
    min_bigram_pmi: float = 30.0  # MetaCLIP: PMI (log2, as nltk computes it) >= 30
    case_sensitive: bool = False  # False: n-grams are counted case-folded
    max_cached_keys: int = 1_000_000  # n-grams a worker combines locally before emitting


@dataclasses.dataclass(frozen=True)
class TitleConfig:
    pageviews: tuple[str, ...] = ()  # public pageview dump files or globs
    project: str = "en"  # pageview domain codes en, en.m and en.wikipedia
    min_views: int = 70  # MetaCLIP: titles viewed at least 70 times over its sampled days
    min_line_views: int = 50  # MetaCLIP ignored pageview lines (an hour) below 50 views
    keep_disambiguation: bool = False  # False: "Mercury (planet)" -> "Mercury"


@dataclasses.dataclass(frozen=True)
class WordNetConfig:
    folder: str | None = None  # WordNet database files (data.noun, ...); None: not used
    lemmas: str = "all"  # all: every lemma of every synset; head: each synset's first lemma


@dataclasses.dataclass(frozen=True)
class WordfreqConfig:
    enabled: bool = False
    language: str = "en"
    min_zipf: float = DEFAULT_WORDFREQ_MIN_ZIPF


@dataclasses.dataclass(frozen=True)
class TableConfig:
    output: str = DEFAULT_OUTPUT
    extra_queries: tuple[str, ...] = ()  # user additions: text (one per line) or parquet
    stop_lists: tuple[str, ...] = ()  # user exclusions, same formats
    case_sensitive: bool = False  # False: queries that differ only in case are one row


@dataclasses.dataclass(frozen=True)
class QueriesConfig:
    wikipedia: WikipediaConfig
    titles: TitleConfig
    wordnet: WordNetConfig
    wordfreq: WordfreqConfig
    table: TableConfig

    @classmethod
    def from_flags(cls, o) -> "QueriesConfig":
        """The parsed flags of `add_queries_flags` -> QueriesConfig (validated)."""
        dumps = tuple(o.wikipedia_dump or ())
        if o.wordfreq not in ("auto", "on", "off"):
            raise ConfigError("--wordfreq must be auto, on or off")
        if o.wordnet_lemmas not in ("all", "head"):
            raise ConfigError("--wordnet-lemmas must be all or head")
        wordnet_folder = o.wordnet
        if wordnet_folder is None:
            # The default is used when it is installed; asked for by name, it must exist.
            wordnet_folder = (DEFAULT_WORDNET_FOLDER
                              if os.path.exists(os.path.join(DEFAULT_WORDNET_FOLDER, "data.noun"))
                              else None)
        elif wordnet_folder.lower() == "none":
            wordnet_folder = None
        config = cls(
            wikipedia=WikipediaConfig(
                dumps=dumps,
                min_unigram_count=o.min_unigram_count,
                min_bigram_count=o.min_bigram_count,
                min_bigram_pmi=o.min_bigram_pmi,
                case_sensitive=o.case_sensitive,
                max_cached_keys=o.count_cache_keys,
            ),
            titles=TitleConfig(
                pageviews=tuple(o.pageviews or ()),
                project=o.wiki_project,
                min_views=o.min_title_views,
                min_line_views=o.min_pageview_line_views,
                keep_disambiguation=o.keep_title_disambiguation,
            ),
            wordnet=WordNetConfig(folder=wordnet_folder, lemmas=o.wordnet_lemmas),
            wordfreq=WordfreqConfig(
                enabled=o.wordfreq == "on" or (o.wordfreq == "auto" and not dumps),
                language=o.wordfreq_language,
                min_zipf=o.wordfreq_min_zipf,
            ),
            table=TableConfig(
                output=(o.output or DEFAULT_OUTPUT).rstrip("/"),
                extra_queries=tuple(o.extra_queries or ()),
                stop_lists=tuple(o.stop_list or ()),
                case_sensitive=o.case_sensitive,
            ),
        )
        config.validate()
        return config

    def validate(self) -> None:
        w, t = self.wikipedia, self.titles
        for name, value in (("--min-unigram-count", w.min_unigram_count),
                            ("--min-bigram-count", w.min_bigram_count),
                            ("--count-cache-keys", w.max_cached_keys)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1")
        if t.min_views < 0 or t.min_line_views < 0:
            raise ConfigError("--min-title-views and --min-pageview-line-views must be >= 0")
        if not (w.dumps or t.pageviews or self.wordnet.folder or self.wordfreq.enabled
                or self.table.extra_queries):
            raise ConfigError("no query source: give --wikipedia-dump, --pageviews, --wordnet, "
                              "--wordfreq on or --extra-queries")


def add_queries_flags(parser) -> None:
    """The flags of `openwit queries`."""
    w, t, f = WikipediaConfig(), TitleConfig(), WordfreqConfig()
    g = parser.add_argument_group("sources")
    add_flag(g, "--wikipedia-dump", action="append", default=None,
             metavar="PATH",
             help="MediaWiki pages-articles XML dump (plain, .bz2 or .gz; a file or glob, "
                  "local or s3:// / gs://); repeat for multi-part dumps. Gives unigrams, "
                  "bigrams and article titles")
    g.add_argument("--pageviews", action="append", default=None, metavar="PATH",
                   help="public pageview dump files (hourly pageviews-*.gz or daily "
                        "pageviews-complete); filters titles by views, or gives titles alone")
    g.add_argument("--wordnet", default=None, metavar="FOLDER",
                   help=f"WordNet database folder (default {DEFAULT_WORDNET_FOLDER} when "
                        "installed; 'none' to leave WordNet out)")
    add_flag(g, "--wordnet-lemmas", default="all",
             help="all: every lemma of every synset (default); head: the synset's first "
                  "lemma, as MetaCLIP took it")
    g.add_argument("--wordfreq", default="auto",
                   help="unigrams from the wordfreq package's word list: auto (default: when no "
                        "dump is given), on, off")
    add_flag(g, "--extra-queries", action="append", default=None,
             metavar="PATH", help="queries to add: text (one per line) or parquet with a "
                                  "`query` column; repeat for several")
    add_flag(g, "--stop-list", action="append", default=None, metavar="PATH",
             help="queries to leave out, same formats; wins over every source")

    g = parser.add_argument_group("thresholds (defaults: the paper's / MetaCLIP's values)")
    add_flag(g, "--min-unigram-count", type=int,
             default=w.min_unigram_count)
    add_flag(g, "--min-bigram-count", type=int,
             default=w.min_bigram_count, help="bigrams scored for PMI")
    add_flag(g, "--min-bigram-pmi", type=float, default=w.min_bigram_pmi,
             help="log2 PMI; a corpus of N words cannot exceed log2(N), so a small dump "
                  "needs a lower value")
    add_flag(g, "--min-title-views", type=int, default=t.min_views)
    add_flag(g, "--min-pageview-line-views", type=int,
             default=t.min_line_views,
             help="pageview lines (an hour, or a day in daily files) below this are ignored")
    add_flag(g, "--wiki-project", default=t.project,
             help="language code of the wiki whose page views count (default en)")
    add_flag(g, "--keep-title-disambiguation",
             type=parse_flag, default=False,
             help="keep \"(planet)\" in \"Mercury (planet)\" (default false)")
    add_flag(g, "--wordfreq-min-zipf", type=float, default=f.min_zipf,
             help="1.4 ~ 100 occurrences in English Wikipedia's ~4 billion words")
    add_flag(g, "--wordfreq-language", default=f.language)
    add_flag(g, "--case-sensitive", type=parse_flag, default=False,
             help="count and deduplicate case-sensitively (default false)")

    g = parser.add_argument_group("output")
    add_output_flag(g, help=f"output folder (default {DEFAULT_OUTPUT}; local, s3:// or gs://)")
    add_flag(g, "--count-cache-keys", type=int,
             default=w.max_cached_keys,
             help="n-grams a worker sums locally before handing them to Beam's combine")
