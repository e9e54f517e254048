"""Duplicate removal: URLs before download, identical image bytes after.

Both keep the member with the smallest sample key, so the survivor does not depend on the
order in which workers see the elements.

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


def _keep_smallest_key(url_and_candidates):
    _, candidates = url_and_candidates
    ordered = sorted(candidates, key=lambda c: c["key"])
    yield ordered[0]
    for duplicate in ordered[1:]:
        yield beam.pvalue.TaggedOutput(
            FAILED,
            failure(duplicate, Stage.DEDUP_URL, Reason.DUPLICATE_URL,
                    f"same URL as {ordered[0]['key']}"),
        )


class DedupUrls(beam.PTransform):
    """Candidates -> StageResult: one candidate per canonical URL."""

    def expand(self, candidates):
        result = (
            candidates
            | "By canonical URL" >> beam.Map(lambda c: (canonical_url(c["url"]), c))
            | "Group by URL" >> beam.GroupByKey()
            | "Keep smallest key" >> beam.FlatMap(_keep_smallest_key).with_outputs(
                FAILED, main=KEPT
            )
        )
        return StageResult(result[KEPT], result[FAILED])


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


def duplicate_image_failure(sample: dict, winner_key: str) -> dict:
    return failure(sample, Stage.DEDUP_IMAGE, Reason.DUPLICATE_IMAGE,
                   f"same image bytes as {winner_key}")

