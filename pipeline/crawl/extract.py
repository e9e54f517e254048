"""Crawl files -> candidates: one per (image URL, alt text) pair, as a Beam transform.

    patterns -> matched files -> spread over workers -> each file's records (`records.py`)
    -> pages (`pages.py`) -> image links resolved (`links.py`) -> pairs with alt text
    -> batches by bucket (a hash of the pair) -> one per (url, alt) across the input

A file is read by one worker from start to end (a WAT file is about 300 MB of gzip members,
and the reader follows them); many files spread over many workers. Pairs without alt text
are counted, not emitted; a pair that repeats (the same image and alt on many pages, or pages
crawled twice) is emitted once, with the page that crawled it first (by date, then page URL,
then record id, so the choice is the same on every runner).

Every count, by name, comes out on `counts` as (name, n); `ExtractResult.totals` sums them.
"""

from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from openwit.pipeline.core import storage
from openwit.pipeline.core.records import sample_key
from openwit.pipeline.crawl.config import CrawlConfig
from openwit.pipeline.crawl.links import Base, image_url
from openwit.pipeline.crawl.pages import page_of_html, page_of_wat
from openwit.pipeline.crawl.records import METADATA, RESPONSE, read_records

COUNTS = "counts"
FLUSH_PAIRS = 50_000  # pairs a worker holds before it sends them on
MIN_BUCKETS, MAX_BUCKETS, BUCKETS_PER_FILE = 16, 65_536, 8


class CrawlCount:
    """The counts of extraction that are not a drop reason. Stable strings: stats.json keys."""

    FILES = "files"
    UNREADABLE_FILE = "unreadable_file"
    RECORDS = "records"
    PAGES = "pages"
    IMAGE_LINKS = "image_links"
    NO_ALT = "no_alt"  # an image link with no alt attribute, or an empty one
    PAIRS = "pairs"  # image links with alt text, before duplicates are removed
    DUPLICATE_PAIRS = "duplicate_pairs"
    CANDIDATES = "candidates"


class ExtractFromFile(beam.DoFn):
    """A file's path -> (bucket, [candidates]) batches, and its counts on COUNTS.

    A candidate's bucket is a hash of its key, so every copy of a pair lands in one bucket.
    Within a batch a pair is already once; the batches go out when FLUSH_PAIRS pairs are held,
    so a worker holds at most that many whatever the file's size."""

    def __init__(self, config: CrawlConfig, buckets: int, flush_pairs: int = FLUSH_PAIRS):
        self._mode = config.mode
        self._max_record_bytes = config.max_record_bytes
        self._buckets = buckets
        self._flush_pairs = flush_pairs
        self._pairs = Metrics.counter("openwit.crawl", "pairs")
        self._files = Metrics.counter("openwit.crawl", "files")

    def process(self, path: str):
        counts = {CrawlCount.FILES: 1}
        pending: dict[int, dict[str, dict]] = {}
        held = 0
        try:
            with storage.open_read(path) as stream:
                for candidate in self._candidates(stream, counts):
                    bucket = pending.setdefault(bucket_of(candidate["key"], self._buckets), {})
                    held += candidate["key"] not in bucket
                    keep_first_crawled(bucket, candidate)
                    if held >= self._flush_pairs:
                        yield from _batches(pending)
                        pending, held = {}, 0
        # The store's own failures (not found between listing and reading, access denied):
        # the file is counted, the others are still read.
        except OSError:
            counts[CrawlCount.UNREADABLE_FILE] = 1
        yield from _batches(pending)
        self._files.inc()
        self._pairs.inc(counts.get(CrawlCount.PAIRS, 0))
        for name, n in counts.items():
            yield beam.pvalue.TaggedOutput(COUNTS, (name, n))

    def _candidates(self, stream, counts: dict):
        wat = self._mode == "wat"
        for record in read_records(stream, counts, self._max_record_bytes,
                                   METADATA if wat else RESPONSE):
            counts[CrawlCount.RECORDS] = counts.get(CrawlCount.RECORDS, 0) + 1
            if wat:
                page = page_of_wat(record.block, counts)
            else:
                page = page_of_html(record.block, record.target_uri or "", record.date,
                                    record.record_id, counts, self._max_record_bytes)
            if page is None:
                continue
            counts[CrawlCount.PAGES] = counts.get(CrawlCount.PAGES, 0) + 1
            yield from candidates_of_page(page, counts)


def _batches(pending: dict):
    for bucket, by_key in pending.items():
        yield bucket, list(by_key.values())


def bucket_of(key: str, buckets: int) -> int:
    return int(key[:8], 16) % buckets


def dedup_buckets(files: int) -> int:
    """Buckets for the pairs of `files` crawl files: enough that each group stays small at
    Common Crawl's scale (a few million pairs per bucket for a whole crawl), few enough that a
    small run sends a few large batches."""
    return max(MIN_BUCKETS, min(MAX_BUCKETS, files * BUCKETS_PER_FILE))


def candidates_of_page(page, counts: dict):
    """The candidate dicts of a page's image links with alt text; the rest counted."""
    base = Base(page.base)
    for src, alt, title in page.images:
        counts[CrawlCount.IMAGE_LINKS] = counts.get(CrawlCount.IMAGE_LINKS, 0) + 1
        url, dropped = image_url(src, base)
        if url is None:
            counts[dropped] = counts.get(dropped, 0) + 1
            continue
        if alt is None or not alt.strip():
            counts[CrawlCount.NO_ALT] = counts.get(CrawlCount.NO_ALT, 0) + 1
            continue
        counts[CrawlCount.PAIRS] = counts.get(CrawlCount.PAIRS, 0) + 1
        yield {"key": sample_key(url, alt), "url": url, "caption": alt, "title": title,
               "page_url": page.url, "crawl_date": page.date, "record_id": page.record_id}


def crawl_order(candidate: dict) -> tuple:
    """Of the copies of one pair the first is kept: by crawl date, page, record, title."""
    return (candidate["crawl_date"] or "", candidate["page_url"] or "",
            candidate["record_id"] or "", candidate["title"] or "")


def keep_first_crawled(kept: dict[str, dict], candidate: dict) -> None:
    """Holds `candidate` in `kept` (by key) unless a copy crawled before it is there."""
    other = kept.get(candidate["key"])
    if other is None or crawl_order(candidate) < crawl_order(other):
        kept[candidate["key"]] = candidate


def one_per_pair(bucket_and_batches) -> list[dict]:
    """A bucket's batches -> its candidates, one per pair (the first crawled), by key."""
    _, batches = bucket_and_batches
    kept: dict[str, dict] = {}
    for batch in batches:
        for candidate in batch:
            keep_first_crawled(kept, candidate)
    return [kept[key] for key in sorted(kept)]


class ExtractResult(typing.NamedTuple):
    candidates: beam.PCollection  # lists of candidate dicts, one per (url, alt) over all
    totals: beam.PCollection  # (count name, total)


class ExtractCandidates(beam.PTransform):
    """Crawl file patterns -> ExtractResult. `files` (how many the patterns match) sizes the
    buckets of the dedup."""

    def __init__(self, config: CrawlConfig, files: int = 1, flush_pairs: int = FLUSH_PAIRS):
        super().__init__()
        self._config = config
        self._buckets = dedup_buckets(files)
        self._flush_pairs = flush_pairs

    def expand(self, pbegin):
        extracted = (
            pbegin
            | "Patterns" >> beam.Create(list(self._config.inputs))
            | "Match files" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Spread files" >> beam.Reshuffle()
            | "Extract pairs" >> beam.ParDo(
                ExtractFromFile(self._config, self._buckets, self._flush_pairs)).with_outputs(
                    COUNTS, main="pairs")
        )
        # Batches, not single candidates, cross the shuffle: a local runner's cost is per
        # element, and a WAT file holds millions of pairs.
        unique = (
            extracted.pairs
            | "By bucket" >> beam.GroupByKey()
            | "One per pair" >> beam.Map(one_per_pair)
            | "Non-empty" >> beam.Filter(bool)
        )
        unique_count = (unique
                        | "Sizes" >> beam.Map(len)
                        | "Count candidates" >> beam.CombineGlobally(sum)
                        | "As count" >> beam.Map(lambda n: (CrawlCount.CANDIDATES, n)))
        totals = ((extracted[COUNTS], unique_count)
                  | "All counts" >> beam.Flatten()
                  | "Totals" >> beam.CombinePerKey(sum))
        return ExtractResult(unique, totals)
