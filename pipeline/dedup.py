"""Duplicate removal: URLs before balancing, identical image bytes after download.

Both keep the member with the smallest sample key, so the survivor does not depend on the
order in which workers see the elements.

URL dedup is split in two so that curation can run over its input more than once without
holding it: `FindDuplicateUrls` names the losers (shuffling four integers per candidate, not
captions), `DropDuplicateUrls` drops them wherever the candidates pass again. Two copies of
the same row (same key) are duplicates too: the row id tells them apart.

Image dedup shuffles only (sha256, key, shard) triples, never the image bytes: its output is
the list of losing keys per shard, which the shard writer joins with the shard's samples (the
images cross the network once, to their shard).
"""

from __future__ import annotations

import array
import hashlib
import urllib.parse

import apache_beam as beam
import numpy as np

from pipeline.read import PLAIN_URL
from pipeline.records import KEY_HEX_CHARS, Reason, Stage, failure
from pipeline.steps import StageOnElements, Step

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
    """Candidates -> (loser row, winner key) for every candidate whose canonical URL an
    earlier one (the smallest key, then the smallest row) already has.

    Only four integers per candidate cross the shuffle, collected per bucket of URL hashes in
    compact arrays: a local runner's memory grows by ~32 bytes per candidate, where grouping
    by URL would hold several hundred. The 128-bit URL hash makes a false duplicate
    vanishingly unlikely (about 1 in 10^20 for a billion URLs).
    """

    def __init__(self, batched: bool = False):
        super().__init__()
        self._batched = batched  # the input holds lists of candidates (see pipeline/steps.py)

    def expand(self, candidates):
        if self._batched:
            entries = candidates | "URL hashes, keys and rows" >> beam.FlatMap(
                _url_entries_by_bucket)
        else:
            entries = candidates | "URL hash, key and row" >> beam.Map(_url_entry)
        return (
            entries
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


class DropDuplicateUrls(beam.PTransform):
    """Candidates -> StageResult without the losers that `FindDuplicateUrls` named."""

    def __init__(self, duplicates: beam.PCollection):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, candidates):
        return candidates | "Drop losers" >> StageOnElements(
            DropDuplicateUrlsStep(), {"losers": beam.pvalue.AsDict(self._duplicates)})


class DedupUrls(beam.PTransform):
    """Candidates -> StageResult: one candidate per canonical URL, the smallest key."""

    def expand(self, candidates):
        duplicates = candidates | "Find" >> FindDuplicateUrls()
        return candidates | "Drop" >> DropDuplicateUrls(duplicates)


def _losers(sha_and_members):
    """(sha256, [(key, shard, is_new)]) -> (shard, (loser key, winner key)) for new losers."""
    _, members = sha_and_members
    ordered = sorted(members)
    winner_key = ordered[0][0]
    for key, shard, is_new in ordered[1:]:
        if is_new and key != winner_key:
            yield shard, (key, winner_key)


class FindImageDuplicates(beam.PTransform):
    """Which downloaded samples repeat an image with a smaller key.

    Input: (shard, sample) pairs of this run, plus (sha256, key, shard) triples already
    written by an earlier run (so a resumed run keeps the same survivors).
    Output: (shard, (loser_key, winner_key)) for every loser of this run.
    """

    def __init__(self, written_hashes: beam.PCollection | None = None):
        super().__init__()
        self._written_hashes = written_hashes

    def expand(self, samples_by_shard):
        new = samples_by_shard | "Hash of new" >> beam.Map(
            lambda kv: (kv[1]["sha256"], (kv[1]["key"], kv[0], True))
        )
        members = [new]
        if self._written_hashes is not None:
            members.append(
                self._written_hashes
                | "Hash of written" >> beam.Map(lambda t: (t[0], (t[1], t[2], False)))
            )
        return (
            members
            | "All hashes" >> beam.Flatten()
            | "Group by sha256" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(_losers)
        )


def duplicate_image_drop(shard_and_pair):
    """(shard, (loser, winner)) -> (shard, the loser's late-drop verdict)."""
    shard, (loser_key, winner_key) = shard_and_pair
    return shard, (loser_key, Stage.DEDUP_IMAGE, Reason.DUPLICATE_IMAGE,
                   f"same image bytes as {winner_key}")

