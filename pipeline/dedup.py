"""Duplicate removal: URLs before balancing, identical image bytes after download.

Both keep the member with the smallest sample key, so the survivor does not depend on the
order in which workers see the elements.

URL dedup is split in two so that curation can run over its input twice without holding it:
pass 1 finds the losers (shuffling keys and query ids, not captions), pass 2 drops them.

Image dedup shuffles only (sha256, key, shard) triples, never the image bytes: its output is
the list of losing keys per shard, which the shard writer joins with the shard's samples (the
images cross the network once, to their shard).
"""

from __future__ import annotations

import urllib.parse

import apache_beam as beam

from pipeline.records import FAILED, KEPT, Reason, Stage, StageResult, failure

DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped; path and query kept."""
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


def _split_winner(url_and_members):
    """(url, [(key, query_ids)]) -> winner's query ids (main), (loser, winner) keys (tagged)."""
    _, members = url_and_members
    ordered = sorted(members)
    winner_key, winner_query_ids = ordered[0]
    yield {"key": winner_key, "query_ids": winner_query_ids}
    for loser_key, _ in ordered[1:]:
        if loser_key != winner_key:  # the same row listed twice is still one candidate
            yield beam.pvalue.TaggedOutput(DUPLICATES, (loser_key, winner_key))


DUPLICATES = "duplicates"


class FindDuplicateUrls(beam.PTransform):
    """Matched candidates -> (unique, duplicates).

    unique: {key, query_ids} of one candidate per canonical URL (the one counting counts);
    duplicates: (loser key, winner key) for every other one. Only keys and query ids cross
    the shuffle, never captions.
    """

    def expand(self, candidates):
        result = (
            candidates
            | "By canonical URL" >> beam.Map(
                lambda c: (canonical_url(c["url"]), (c["key"], c["query_ids"])))
            | "Group by URL" >> beam.GroupByKey()
            | "Smallest key wins" >> beam.FlatMap(_split_winner).with_outputs(
                DUPLICATES, main=KEPT)
        )
        return result[KEPT], result[DUPLICATES]


def _drop_duplicate(candidate, losers):
    winner = losers.get(candidate["key"])
    if winner is None:
        yield candidate
    else:
        yield beam.pvalue.TaggedOutput(
            FAILED, failure(candidate, Stage.DEDUP_URL, Reason.DUPLICATE_URL,
                            f"same URL as {winner}"))


class DropDuplicateUrls(beam.PTransform):
    """Candidates -> StageResult without the losers that `FindDuplicateUrls` named."""

    def __init__(self, duplicates: beam.PCollection):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, candidates):
        result = candidates | "Drop losers" >> beam.FlatMap(
            _drop_duplicate, losers=beam.pvalue.AsDict(self._duplicates)
        ).with_outputs(FAILED, main=KEPT)
        return StageResult(result[KEPT], result[FAILED])


class DedupUrls(beam.PTransform):
    """Candidates -> StageResult: one candidate per canonical URL, the smallest key."""

    def expand(self, candidates):
        _, duplicates = candidates | "Find" >> FindDuplicateUrls()
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

