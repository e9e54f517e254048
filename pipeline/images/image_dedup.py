"""Stage 9: identical downloaded bytes (sha256) are one image; the smallest sample key keeps it.

Only (sha256, key, shard) triples cross the shuffle, never the image bytes: the output is the
failure record of each losing key, keyed by its shard, which the shard writer joins with the
shard's samples (the images cross the network once, to their shard). Hashes of shards an
earlier run completed take part, so a resumed run keeps the same survivors.
"""

from __future__ import annotations

import apache_beam as beam

from openwit.pipeline.core.records import Reason, Stage, failure


def _losers(sha_and_members):
    """(sha256, [(key, shard, is_new)]) -> (shard, failure record) for each new loser."""
    _, members = sha_and_members
    ordered = sorted(members)
    winner_key = ordered[0][0]
    for key, shard, is_new in ordered[1:]:
        if is_new and key != winner_key:
            yield shard, failure({"key": key}, Stage.DEDUP_IMAGE, Reason.DUPLICATE_IMAGE,
                                 f"same image bytes as {winner_key}")


class FindImageDuplicates(beam.PTransform):
    """Which downloaded samples repeat an image with a smaller key.

    Input: (shard, sample) pairs of this run, plus (sha256, key, shard) triples already
    written by an earlier run.
    Output: (shard, failure record) for every loser of this run; the record has the key, and
    the shard writer adds url and caption from the sample.
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
