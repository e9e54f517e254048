"""Stage 4: one candidate per canonical URL, before counting and balancing.

The member with the smallest sample key survives, so the survivor does not depend on the
order in which workers see the elements.

URL dedup is split in two so that curation can run over its input more than once without
holding it: `FindDuplicateUrls` names the losers (shuffling four integers per candidate, not
captions), `DropDuplicateUrlsStep` drops them wherever the candidates pass again. Two copies of
the same row (same key) are duplicates too: the row id tells them apart.
"""

from __future__ import annotations

import array
import hashlib
import urllib.parse

import apache_beam as beam
import numpy as np

from openwit.pipeline.text.read import PLAIN_URL
from openwit.pipeline.core.records import KEY_HEX_CHARS, Reason, Stage, failure
from openwit.pipeline.text.steps import Step

DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped; path and query kept."""
    # A plain URL is already canonical, unless it ends in an empty query ("...?"), which
    # urlunsplit drops: skip the full parse for it.
    if PLAIN_URL.fullmatch(url) and url.find("?") != len(url) - 1:
        return url
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


URL_BUCKETS = 1024


_KEY_OFFSET = 2**63  # 16-hex-digit keys as signed 64-bit integers, order kept


def _url_entry(candidate):
    """candidate -> (bucket, (url hash high, url hash low, key, row)), four signed 64-bit
    integers (what Beam's integer coder carries)."""
    digest = hashlib.blake2b(canonical_url(candidate["url"]).encode("utf-8", "surrogatepass"),
                             digest_size=16).digest()
    high = int.from_bytes(digest[:8], "big", signed=True)
    low = int.from_bytes(digest[8:], "big", signed=True)
    key = int(candidate["key"], 16) - _KEY_OFFSET
    return low % URL_BUCKETS, (high, low, key, candidate["row"])


def _url_entries_by_bucket(candidates: list[dict]):
    """A batch of candidates -> (bucket, array of its entries' integers) per bucket present."""
    entries = array.array("q")
    for candidate in candidates:
        entries.extend(_url_entry(candidate)[1])
    table = np.frombuffer(entries, dtype=np.int64).reshape(-1, 4)
    buckets = table[:, 1] % URL_BUCKETS
    order = np.argsort(buckets, kind="stable")
    table, buckets = table[order], buckets[order]
    starts = np.flatnonzero(np.concatenate([[True], buckets[1:] != buckets[:-1]]))
    for start, end in zip(starts, np.append(starts[1:], len(table))):
        yield int(buckets[start]), array.array("q", table[start:end].tobytes())


class _DuplicatesInBucket(beam.CombineFn):
    """Collects a bucket's URL entries in a flat array of 64-bit integers (32 bytes per
    candidate, not a Python object per candidate) and names the losers at the end."""

    def create_accumulator(self):
        return array.array("q")

    def add_input(self, entries, entry):
        entries.extend(entry)
        return entries

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for entries in accumulators:
            merged.extend(entries)
        return merged

    def extract_output(self, entries):
        """[(loser row, winner key)]: per URL, the smallest (key, row) wins."""
        table = np.frombuffer(entries, dtype=np.int64).reshape(-1, 4)
        if not len(table):
            return []
        order = np.lexsort((table[:, 3], table[:, 2], table[:, 1], table[:, 0]))
        table = table[order]
        same_url = np.all(table[1:, :2] == table[:-1, :2], axis=1)
        first_of_url = np.concatenate([[True], ~same_url])
        winner_index = np.maximum.accumulate(np.where(first_of_url, np.arange(len(table)), 0))
        losers = np.flatnonzero(~first_of_url)
        return [(int(table[i, 3]),
                 f"{int(table[winner_index[i], 2]) + _KEY_OFFSET:0{KEY_HEX_CHARS}x}")
                for i in losers]


class FindDuplicateUrls(beam.PTransform):
    """Batches (lists) of candidates -> (loser row, winner key) for every candidate whose canonical URL an
    earlier one (the smallest key, then the smallest row) already has.

    Only four integers per candidate cross the shuffle, collected per bucket of URL hashes in
    compact arrays: a local runner's memory grows by ~32 bytes per candidate, where grouping
    by URL would hold several hundred. The 128-bit URL hash makes a false duplicate
    vanishingly unlikely (about 1 in 10^20 for a billion URLs).
    """

    def expand(self, batches):
        return (
            batches
            | "URL hashes, keys and rows" >> beam.FlatMap(_url_entries_by_bucket)
            | "Per URL bucket" >> beam.CombinePerKey(_DuplicatesInBucket())
            | "Losers" >> beam.FlatMap(lambda bucket_and_losers: bucket_and_losers[1])
        )


class DropDuplicateUrlsStep(Step):
    """Side input `losers`: {loser row: winner key}, from `FindDuplicateUrls`."""

    stage = Stage.DEDUP_URL
    side_input = "losers"

    def run(self, candidates, losers):
        if not losers:
            return candidates, []
        kept, failures = [], []
        for candidate in candidates:
            winner = losers.get(candidate["row"])
            if winner is None:
                kept.append(candidate)
            else:
                failures.append(failure(candidate, Stage.DEDUP_URL, Reason.DUPLICATE_URL,
                                        f"same URL as {winner}"))
        return kept, failures
