"""Page views per article title from Wikimedia's public pageview dumps.

Two line formats, told apart by their number of fields:

    hourly   pageviews-YYYYMMDD-HH0000.gz     domain_code page_title count_views response_size
    daily    pageviews-YYYYMMDD-user.bz2      wiki_code page_title page_id access daily_total hourly

English Wikipedia is `en` (desktop) and `en.m` (mobile) in hourly files, `en.wikipedia` in daily
ones; other projects of the language (`en.b` books, `en.d` wiktionary, ...) do not count. As in
MetaCLIP, a line below `min_line_views` is ignored (an hour with under 50 views), then views
are summed per title over every file given.
"""

from __future__ import annotations

import urllib.parse

import apache_beam as beam
from apache_beam import coders
from apache_beam.pvalue import TaggedOutput

from openwit.queries.config import TitleConfig
from openwit.queries.rows import STATS, Source, query_row, stat
from openwit.queries.wikipedia import title_query

# Titles of these namespaces are not articles ("Category:Cats", "File:Cat.jpg"). Only needed
# when titles come from page views alone; a dump says each page's namespace.
NON_ARTICLE_PREFIXES = frozenset({
    "talk", "user", "user talk", "wikipedia", "wikipedia talk", "wp", "file", "file talk",
    "image", "mediawiki", "template", "template talk", "help", "category", "category talk",
    "portal", "draft", "timedtext", "module", "special", "media", "book", "education program",
    "gadget", "topic",
})


def project_codes(language: str) -> frozenset[str]:
    return frozenset({language, f"{language}.m", f"{language}.wikipedia"})


def parse_pageview_line(line: bytes, projects: frozenset[str]):
    """(title, views) of an English Wikipedia line; None for other projects; ValueError(reason)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError("not_utf8") from err
    fields = text.split(" ")
    if len(fields) == 4:
        project, title, views = fields[0], fields[1], fields[2]
    elif len(fields) in (5, 6):
        project, title, views = fields[0], fields[1], fields[4]
    else:
        raise ValueError("wrong_field_count")
    if project not in projects:
        return None
    if not views.isdigit():
        raise ValueError("bad_view_count")
    if "%" in title:
        title = urllib.parse.unquote(title)
    title = title.replace("_", " ").strip()
    if not title:
        raise ValueError("missing_title")
    return title, int(views)


class ParsePageviewsFn(beam.DoFn):
    def __init__(self, config: TitleConfig):
        self._config = config

    def setup(self):
        self._projects = project_codes(self._config.project)

    def process(self, line: bytes):
        if not line.strip():
            return
        try:
            parsed = parse_pageview_line(line.rstrip(b"\r\n"), self._projects)
        except ValueError as err:
            yield TaggedOutput(STATS, stat(f"pageviews.failed.{err}"))
            return
        if parsed is None:
            yield TaggedOutput(STATS, stat("pageviews.other_project_lines"))
        elif parsed[1] < self._config.min_line_views:
            yield TaggedOutput(STATS, stat("pageviews.lines_below_min_line_views"))
        else:
            yield parsed


class ReadPageviews(beam.PTransform):
    """Pageview files -> ((title, total views) per title, stats)."""

    def __init__(self, config: TitleConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        # Bytes, not str: one undecodable line must be counted, not end the job.
        lines = [
            # validate=False: the launcher lists the patterns itself (one line when one
            # matches nothing), and a dry run must list nothing.
            pbegin | f"Read pageviews {i}" >> beam.io.ReadFromText(
                pattern, coder=coders.BytesCoder(), validate=False)
            for i, pattern in enumerate(self._config.pageviews)
        ] | "All pageview lines" >> beam.Flatten()
        parsed = lines | "Parse pageviews" >> beam.ParDo(
            ParsePageviewsFn(self._config)).with_outputs(STATS, main="views")
        views = parsed["views"] | "Sum views per title" >> beam.CombinePerKey(sum)
        stats = (
            parsed["views"] | "Line stat" >> beam.Map(lambda _: stat("pageviews.lines_counted")),
            parsed[STATS],
        ) | "Pageview stats" >> beam.Flatten()
        return views, stats


def is_article_title(title: str) -> bool:
    prefix, colon, _ = title.partition(":")
    return not (colon and prefix.strip().casefold() in NON_ARTICLE_PREFIXES)


class TitlesFromPageviews(beam.PTransform):
    """(title, views) -> title query rows, without a dump (as MetaCLIP built its titles)."""

    def __init__(self, config: TitleConfig):
        super().__init__()
        self._config = config

    def expand(self, views):
        config = self._config
        return (
            views
            | "Viewed enough" >> beam.Filter(
                lambda kv: kv[1] >= config.min_views and is_article_title(kv[0]))
            | "Title rows" >> beam.MapTuple(lambda title, n: query_row(
                title_query(title, config.keep_disambiguation), Source.TITLE, views=n))
        )
