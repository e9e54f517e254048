"""Near-duplicate search (bands, hot buckets, groups) and the evaluation-set exclusion."""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.records import Reason
from openwit.pipeline.images import eval_set
from openwit.pipeline.images.config import DedupConfig
from openwit.pipeline.images.image_hash import (
    COLOUR_VALUES,
    UNKNOWN_COLOUR,
    ImageHasher,
    bands,
    colour_levels,
    colours_close,
    hamming,
    to_words,
)
from openwit.pipeline.images.near_dedup import (
    EvalIndex,
    FindNearDuplicates,
    close_pairs,
    colour_pairs,
    near_pairs,
)


def all_pairs(hashes, distance):
    return {(i, j) for i, j in itertools.combinations(range(len(hashes)), 2)
            if hamming(hashes[i], hashes[j]) <= distance}


def flip(value: int, bits: int, count: int, rng: random.Random) -> int:
    for bit in rng.sample(range(bits), count):
        value ^= 1 << bit
    return value


def hex_of(value: int, bits: int) -> str:
    return f"{value:0{bits // 4}x}"


def clustered_hashes(seed: int, bits: int, clusters: int, per_cluster: int, spread: int):
    """Random centres, each with neighbours a few bits away: pairs at every distance."""
    rng = random.Random(seed)
    out = []
    for _ in range(clusters):
        centre = rng.getrandbits(bits)
        out += [hex_of(flip(centre, bits, rng.randint(0, spread), rng), bits)
                for _ in range(per_cluster)]
    rng.shuffle(out)
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), bits=st.sampled_from([64, 256]),
       distance=st.integers(0, 12), hot_bucket=st.sampled_from([2, 3, 8, 2048]))
def test_bands_find_exactly_the_pairs_all_pairs_finds(seed, bits, distance, hot_bucket):
    hashes = clustered_hashes(seed, bits, clusters=6, per_cluster=6, spread=2 * distance + 2)
    assert near_pairs(hashes, bits, distance, hot_bucket) == all_pairs(hashes, distance)


@pytest.mark.parametrize("hot_bucket", [4, 16, 10_000])
def test_a_band_value_shared_by_many_hashes_is_searched_exactly(hot_bucket):
    # Adversarial: every hash has the same top 40 bits, so one band holds them all, and the
    # rest are random or near one another.
    rng = random.Random(7)
    bits, distance = 64, 6
    base = rng.getrandbits(40) << 24
    hashes = [hex_of(base | rng.getrandbits(24), bits) for _ in range(300)]
    hashes += [hex_of(flip(int(hashes[i], 16), 24, 3, rng), bits) for i in range(0, 300, 7)]
    assert near_pairs(hashes, bits, distance, hot_bucket) == all_pairs(hashes, distance)


def test_a_hot_bucket_is_sub_split_not_compared_all_pairs(monkeypatch):
    # 4,000 distinct 256-bit hashes with one band value in common (a placeholder picture
    # with noise, in clusters): sub-splitting compares a small fraction of the 8 million
    # pairs, and misses none.
    from openwit.pipeline.images import near_dedup

    rng = random.Random(3)
    bits, distance = 256, 8
    base = rng.getrandbits(28) << 228
    centres = [base | rng.getrandbits(228) for _ in range(400)]
    hashes = sorted({hex_of(flip(rng.choice(centres), 228, rng.randint(0, 6), rng), bits)
                     for _ in range(4000)})
    compared = []
    real = near_dedup.distances
    monkeypatch.setattr(near_dedup, "distances",
                        lambda a, b: compared.append(len(a) * len(b)) or real(a, b))
    words = to_words(hashes, bits)
    found = {(min(i, j), max(i, j)) for rows, cols in
             close_pairs(words, bits, distance, hot_bucket=64)
             for i, j in zip(rows.tolist(), cols.tolist())}
    assert sum(compared) < 0.1 * len(hashes) ** 2 / 2
    matrix = real(words, words)
    expected = {(i, j) for i, j in zip(*np.nonzero(matrix <= distance)) if i < j}
    assert found == expected and expected


def test_the_union_find_takes_long_chains_in_any_order():
    from openwit.pipeline.images.near_dedup import UnionFind

    groups = UnionFind()
    nodes = [f"k{i:06d}" for i in range(20_000)]
    for a, b in zip(reversed(nodes[:-1]), reversed(nodes[1:])):  # the worst order for depth
        groups.union(b, a)
    assert {groups.find(node) for node in nodes} == {nodes[0]}


def test_pigeonhole_bands_share_a_value_for_every_close_pair():
    rng = random.Random(1)
    for _ in range(200):
        distance = rng.randint(0, 10)
        a = rng.getrandbits(64)
        b = flip(a, 64, rng.randint(0, distance), rng)
        assert set(bands(hex_of(a, 64), 64, distance)) & set(bands(hex_of(b, 64), 64, distance))


# --------------------------------------------------------------------- the Beam stage

BITS = 64


def h(value: int) -> str:
    return hex_of(value, BITS)


def views(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def colour(*values: int) -> str:
    """A colour code whose every cell value is `values[0]`, or the values given, cell by cell."""
    cells = list(values) if len(values) > 1 else list(values) * COLOUR_VALUES
    return bytes(cells).hex()


def node(sample):
    """(key, shard, hash or hashes[, colour or colours]) -> the stage's (key, shard, hashes,
    colours); no colour: None, compared by hash alone."""
    key, shard, value, *rest = sample
    colours = views(rest[0]) if rest and rest[0] is not None else None
    return key, shard, views(value), colours


def assert_losers(expected, new, written=(), eval_hashes=None, distance=4, hot_bucket=2048,
                  near_crops=True, colour_step=4):
    """FindNearDuplicates on (key, shard, hash or hashes[, colours]) removes exactly
    `expected`, {key: (shard, reason, detail)}."""
    new = [node(sample) for sample in new]
    written = [node(sample) for sample in written]
    with TestPipeline(runner="DirectRunner") as pipeline:
        written_pc = pipeline | "Written" >> beam.Create(written)
        eval_pc = (pipeline | "Eval" >> beam.Create(
            [(views(value), source) for value, source in eval_hashes])
                   if eval_hashes is not None else None)
        removed = (pipeline | beam.Create(new)
                   | FindNearDuplicates(DedupConfig(near_distance=distance, eval_distance=distance,
                                                  hot_bucket=hot_bucket, near_crops=near_crops,
                                                  colour_step=colour_step),
                                        BITS, written=written_pc, eval_hashes=eval_pc)
                   | beam.Map(lambda kv: (kv[1]["key"], (kv[0], kv[1]["reason"], kv[1]["detail"]))))
        assert_that(removed, equal_to(sorted(expected.items())))


def kept(key, distance):
    return f"Hamming distance {distance} from {key}, which is kept"


def test_a_chain_is_one_group_and_its_smallest_key_survives():
    a = 0b1111 << 60
    chain = [("k3", 0, h(a)), ("k1", 1, h(a ^ 0b111)), ("k2", 1, h(a ^ 0b111111)),
             ("k9", 2, h(0x0123456789ABCDEF))]
    # k3 and k2 are 6 bits apart, each 3 from k1: one group, k1 kept.
    assert_losers({"k3": (0, Reason.NEAR_DUPLICATE, kept("k1", 3)),
                   "k2": (1, Reason.NEAR_DUPLICATE, kept("k1", 3))}, chain, distance=3)


def test_identical_hashes_collapse_and_the_smallest_key_survives():
    same = [(f"k{i:02d}", i % 3, h(42)) for i in range(30)]
    assert_losers({f"k{i:02d}": (i % 3, Reason.NEAR_DUPLICATE, kept("k00", 0))
                   for i in range(1, 30)}, same)


def test_samples_of_completed_shards_group_by_key_and_are_never_removed():
    new = [("b", 3, h(1000)), ("c", 3, h(1001))]
    # A completed shard's sample with a smaller key (written, or dropped after grouping):
    # the new ones lose to it, as they did in the run that completed the shard.
    assert_losers({"b": (3, Reason.NEAR_DUPLICATE, kept("a", hamming(h(1000), h(1003)))),
                   "c": (3, Reason.NEAR_DUPLICATE, kept("a", hamming(h(1001), h(1003))))},
                  new, written=[("a", 0, h(1003))])
    # With a bigger key it is not removed (it is in a shard), and the smallest new one stays.
    assert_losers({"c": (3, Reason.NEAR_DUPLICATE, kept("b", 1))},
                  new, written=[("z", 0, h(1003))])


def agree(a: str | None, b: str | None, step: int) -> bool:
    """Colours agree: unknown, or no cell more than one level of `step` apart (by hand)."""
    if a is None or b is None or not step:
        return True
    return all(abs(x // step - y // step) <= 1 for x, y in zip(bytes.fromhex(a), bytes.fromhex(b)))


def expected_by_all_pairs(samples, distance, colour_step=4):
    """The losers, from an all-pairs search over every pair of views and a plain union-find:
    the reference. `samples`: (key, shard, hash or hashes[, colours])."""
    samples = [node(sample) for sample in samples]
    parent = {key: key for key, _, _, _ in samples}

    def find(key):
        while parent[key] != key:
            key = parent[key]
        return key

    def closest(a, b):
        return min(hamming(x, y) for x in a for y in b)

    def linked(a, colours_a, b, colours_b):
        colours_a = colours_a or (None,) * len(a)
        colours_b = colours_b or (None,) * len(b)
        return any(hamming(x, y) <= distance and agree(cx, cy, colour_step)
                   for x, cx in zip(a, colours_a) for y, cy in zip(b, colours_b))

    for (a, _, va, ca), (b, _, vb, cb) in itertools.combinations(samples, 2):
        if linked(va, ca, vb, cb):
            low, high = sorted((find(a), find(b)))
            parent[high] = low
    views_of = {key: value for key, _, value, _ in samples}
    return {key: (shard, Reason.NEAR_DUPLICATE, kept(find(key), closest(value, views_of[find(key)])))
            for key, shard, value, _ in samples if find(key) != key}


def test_the_survivors_are_all_pairs_ones_whatever_the_order_or_bucket_size():
    rng = random.Random(5)
    hashes = clustered_hashes(11, BITS, clusters=20, per_cluster=5, spread=6)
    triples = [(f"key{i:03d}", i % 4, value) for i, value in enumerate(hashes)]
    expected = expected_by_all_pairs(triples, 4)
    assert expected  # the clusters do hold near-duplicates
    assert_losers(expected, triples)
    rng.shuffle(triples)
    assert_losers(expected, triples, hot_bucket=2)


def test_a_sample_is_one_picture_with_another_when_any_of_their_views_are_close():
    whole, crop = h(0xF0F0_F0F0 << 20), h(0x0F0F_0F0F)
    # b's whole hash is close to a's crop view only; c shares a crop view's value exactly with
    # d; e's two views are close to each other and to nothing else.
    new = [("a", 0, (whole, crop)), ("b", 1, (h(0x0F0F_0F0F ^ 0b101),)),
           ("c", 2, (h(0xAAAA << 30), h(0x5555))), ("d", 2, (h(0x5555), h(0xCCCC << 44))),
           ("e", 3, (h(0xFFFF << 48), h((0xFFFF << 48) ^ 1)))]
    assert_losers({"b": (1, Reason.NEAR_DUPLICATE, kept("a", 2)),
                   "d": (2, Reason.NEAR_DUPLICATE, kept("c", 0))}, new, distance=3)


def test_without_crops_only_whole_pictures_group_and_evaluation_images_use_every_view():
    new = [("a", 0, (h(0xF0F0_F0F0 << 20), h(0x0F0F_0F0F))), ("b", 1, (h(0x0F0F_0F0F ^ 0b101),)),
           ("c", 2, (h(0xFFFF << 48), h(0xAAAA)))]
    assert_losers({}, new[:2], distance=3, near_crops=False)
    assert_losers({"c": (2, Reason.EVAL_DUPLICATE,
                         "Hamming distance 1 from evaluation image eval/1.jpg")},
                  new, eval_hashes=[((h(0xAAAB),), "eval/1.jpg")], distance=3, near_crops=False)


def test_groups_through_views_are_the_all_pairs_ones():
    rng = random.Random(8)
    centres = clustered_hashes(3, BITS, clusters=15, per_cluster=4, spread=6)
    samples = [(f"s{i:03d}", i % 3, tuple(rng.sample(centres, rng.randint(1, 3))))
               for i in range(40)]
    expected = expected_by_all_pairs(samples, 4)
    assert expected
    assert_losers(expected, samples)
    assert_losers(expected, list(reversed(samples)), hot_bucket=2)


def test_identical_hashes_of_other_colours_are_other_pictures():
    # One grey pattern in three colours (a red, a black and a blue disc on paper hash alike),
    # and a re-encoded red one whose cells moved by a level at most.
    red, red_again, black, blue = colour(200), colour(*[203] * 20 + [196] * 7), colour(20), colour(120)
    new = [("a", 0, h(7), red), ("b", 1, h(7), black), ("c", 2, h(7 ^ 1), red_again),
           ("d", 3, h(7), blue), ("e", 4, h(7), None)]
    # e's colour is unknown (a record without one): it joins by hash alone, with everything.
    assert_losers({"c": (2, Reason.NEAR_DUPLICATE, kept("a", 1))}, new[:4])
    assert_losers({key: (shard, Reason.NEAR_DUPLICATE, kept("a", int(key == "c")))
                   for key, shard, *_ in new[1:]}, new)
    # A step of 0: hashes alone.
    assert_losers({key: (shard, Reason.NEAR_DUPLICATE, kept("a", int(key == "c")))
                   for key, shard, *_ in new[1:4]}, new[:4], colour_step=0)
    # Each view has its own colour: b's crop view is a's whole picture in a's colour.
    assert_losers({"b": (1, Reason.NEAR_DUPLICATE, kept("a", 0))},
                  [new[0], ("b", 1, (h(7), h(99)), (black, red))])


def test_groups_through_views_and_colours_are_the_all_pairs_ones():
    rng = random.Random(12)
    centres = clustered_hashes(4, BITS, clusters=10, per_cluster=4, spread=5)
    palette = [colour(*[rng.choice((60, 61, 64, 68, 120)) for _ in range(COLOUR_VALUES)])
               for _ in range(6)]
    samples = []
    for i in range(50):
        count = rng.randint(1, 3)
        colours = None if i % 11 == 0 else tuple(rng.choice(palette) for _ in range(count))
        samples.append((f"s{i:03d}", i % 3, tuple(rng.sample(centres, count)), colours))
    expected = expected_by_all_pairs(samples, 4)
    assert expected and expected != expected_by_all_pairs(samples, 4, colour_step=0)
    assert_losers(expected, samples)
    assert_losers(expected, list(reversed(samples)), hot_bucket=2)


def random_levels(rng, rows: int, spread: int) -> np.ndarray:
    centres = rng.integers(0, 60, (max(1, rows // 8), COLOUR_VALUES))
    noise = rng.integers(-spread, spread + 1, (rows, COLOUR_VALUES))
    return np.clip(centres[rng.integers(0, len(centres), rows)] + noise, 0, 63).astype(np.int16)


def all_colour_pairs(levels):
    agree = colours_close(levels[:, None], levels[None, :])
    return {(i, j) for i, j in zip(*np.nonzero(agree)) if i < j}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), rows=st.integers(2, 300), spread=st.integers(0, 2),
       hot_bucket=st.sampled_from([2, 5, 64, 2048]), unknown=st.integers(0, 3))
def test_colour_pairs_are_exactly_the_agreeing_pairs(seed, rows, spread, hot_bucket, unknown):
    rng = np.random.default_rng(seed)
    levels = random_levels(rng, rows, spread)
    levels[rng.choice(rows, min(unknown, rows), replace=False)] = UNKNOWN_COLOUR
    found = {(min(i, j), max(i, j)) for r, c in colour_pairs(levels, hot_bucket)
             for i, j in zip(r.tolist(), c.tolist())}
    assert found == all_colour_pairs(levels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), distance=st.integers(0, 8),
       hot_bucket=st.sampled_from([2, 8, 2048]))
def test_bands_with_colours_find_exactly_the_all_pairs_pairs(seed, distance, hot_bucket):
    hashes = clustered_hashes(seed, 64, clusters=5, per_cluster=8, spread=distance + 2)
    levels = random_levels(np.random.default_rng(seed), len(hashes), 1)
    expected = {(i, j) for i, j in all_pairs(hashes, distance)
                if colours_close(levels[i], levels[j])}
    assert near_pairs(hashes, 64, distance, hot_bucket, levels) == expected


def test_one_flat_picture_in_thousands_of_colours_is_split_on_colour_not_compared_all_pairs(
        monkeypatch):
    # Blank pictures of every colour share one pHash: a hot bucket that only colour tells
    # apart. Splitting on the widest cell value compares a small part of the pairs.
    from openwit.pipeline.images import near_dedup

    rng = np.random.default_rng(5)
    flat = rng.integers(0, 64, (4000, 3))
    levels = np.tile(flat, (1, COLOUR_VALUES // 3)).astype(np.int16)
    compared = []
    real = near_dedup.colours_close
    monkeypatch.setattr(near_dedup, "colours_close",
                        lambda a, b: compared.append(a.size // COLOUR_VALUES * b.shape[-2]
                                                     if a.ndim == 3 else len(a)) or real(a, b))
    words = to_words([h(5)] * len(levels), BITS)
    found = {(min(i, j), max(i, j)) for rows, cols in
             close_pairs(words, BITS, 4, hot_bucket=64, levels=levels)
             for i, j in zip(rows.tolist(), cols.tolist())}
    assert compared and sum(compared) < 0.1 * len(levels) ** 2 / 2
    assert found == all_colour_pairs(levels) and found


def test_copies_of_evaluation_images_are_removed_before_grouping():
    new = [("a", 0, h(0xF0F0)), ("b", 0, h(0xF0F4)), ("c", 1, h(0xFFFF_0000_0000_0000))]
    # b is 1 bit from a but 3 from the evaluation image: a is gone, so b survives.
    assert_losers({"a": (0, Reason.EVAL_DUPLICATE, "Hamming distance 2 from evaluation image eval/cat/1.jpg")},
                  new, eval_hashes=[(h(0xF0F0 ^ 0b11), "eval/cat/1.jpg")], distance=2)


def test_evaluation_images_have_their_own_wider_distance():
    new = [("a", 0, h(0b1111)), ("b", 1, h(0xFF00_0000))]
    with TestPipeline(runner="DirectRunner") as pipeline:
        removed = (pipeline | beam.Create([(key, shard, (value,), None)
                                           for key, shard, value in new])
                   | FindNearDuplicates(DedupConfig(near_distance=2, eval_distance=4), BITS,
                                        eval_hashes=pipeline | "Eval" >> beam.Create(
                                            [((h(0),), "eval/0.jpg")]))
                   | beam.Map(lambda kv: (kv[1]["key"], kv[1]["reason"])))
        assert_that(removed, equal_to([("a", Reason.EVAL_DUPLICATE)]))


def test_the_eval_index_finds_the_closest_within_the_distance():
    index = EvalIndex([((h(0),), "zero"), ((h(0xFFFF_0000), h(0b111)), "seven")], BITS, 2)
    assert index.closest([h(0b1)]) == (1, "zero")
    assert index.closest([h(0b1111)]) == (1, "seven")  # a crop view of "seven"
    assert index.closest([h(0xFF00)]) is None
    # Any view of the sample counts: its crop is close to "zero".
    assert index.closest([h(0xFF00), h(0b11 << 40)]) == (2, "zero")


# ------------------------------------------------------------------ evaluation sets


def jpeg(seed: int, size=(96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_folders_shards_and_hash_lists_hash_alike_and_bad_files_are_counted(tmp_path, monkeypatch):
    hasher = ImageHasher("phash", 8)
    folder = tmp_path / "eval" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(jpeg(1))
    (folder / "2.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("ignored: not an image name")
    shard = tmp_path / "eval.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000.jpg", jpeg(1)), ("000.txt", b"a cat"), ("001.jpg", b"\xff\xd8junk"),
                           ("002.jpg", jpeg(2) + b"x" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(eval_set, "MAX_IMAGE_BYTES", 4000)
    hashes = eval_set.hash_paths([str(tmp_path / "eval"), str(shard)], hasher)
    by_source = dict((source, value) for value, source in hashes.hashes)
    assert all(len(value) == hasher.views for value in by_source.values())
    assert by_source[str(folder / "1.jpg")] == by_source[f"{shard}:000.jpg"]
    reasons = dict(hashes.unreadable)
    assert reasons[str(folder / "2.png")].startswith("not_an_image")
    assert reasons[f"{shard}:001.jpg"].startswith("not_an_image")
    assert reasons[f"{shard}:002.jpg"] == "image_too_large"
    assert len(hashes.hashes) == 2

    listed = tmp_path / "hashes.json"
    eval_set.write_hash_list(str(listed), hashes)
    again = eval_set.hash_paths([str(listed)], hasher)
    assert again.hashes == hashes.hashes and again.unreadable == hashes.unreadable


def test_a_broken_shard_is_counted_not_raised(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00" * 100 + b"not a tar")
    hashes = eval_set.hash_paths([str(broken)], ImageHasher("phash", 8))
    assert hashes.hashes == [] and hashes.unreadable[0][1].startswith("broken_shard")


@pytest.mark.parametrize("content", [
    "not json", json.dumps([1, 2]), json.dumps({"format": "other"}),
    json.dumps({"format": "openwit-image-hashes/2", "kind": "phash", "size": 8,
                "hashes": [[["zz"], "a.jpg"]]}),
    json.dumps({"format": "openwit-image-hashes/2", "kind": "phash", "size": 8,
                "hashes": [["0123456789abcdef", "a.jpg"]]}),
    json.dumps({"format": "openwit-image-hashes/2", "kind": "phash", "size": 8,
                "hashes": [[[], "a.jpg"]]}),
    json.dumps({"format": "openwit-image-hashes/2", "kind": "nohash", "size": 8, "hashes": []}),
    json.dumps({"format": "openwit-image-hashes/1", "kind": "phash", "size": 8,
                "hashes": [["0123456789abcdef", "a.jpg"]]}),
])
def test_a_malformed_hash_list_is_one_config_error(tmp_path, content):
    path = tmp_path / "hashes.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        eval_set.hash_paths([str(path)], ImageHasher("phash", 8))


def test_a_hash_list_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "hashes.json"
    eval_set.write_hash_list(str(path), eval_set.HashList("dhash", 8, [((h(1),), "a.jpg")]))
    with pytest.raises(ConfigError, match="dhash"):
        eval_set.hash_paths([str(path)], ImageHasher("phash", 8))


def test_openwit_hashes_writes_a_list_exclude_images_reads(tmp_path, capsys):
    from openwit.pipeline.apps.cli import main

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "a.jpg").write_bytes(jpeg(3))
    out = tmp_path / "eval.json"
    assert main(["hashes", str(tmp_path / "eval"), "--output", str(out)]) == 0
    assert "1 images hashed" in capsys.readouterr().out
    listed = eval_set.read_hash_list(str(out))
    assert (listed.kind, listed.size) == ("phash", 16)
    assert listed.hashes[0][0] == ImageHasher("phash", 16, 12).of_bytes(jpeg(3))


# ------------------------------------------------------------------ the hashes themselves


def smooth_picture(seed: int, size=(300, 240)) -> np.ndarray:
    """A picture with structure at every scale, as photographs have (BGR uint8)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((size[1], size[0], 3), dtype=np.float64)
    for cells in (3, 7, 15, 31):
        small = rng.random((cells, cells, 3))
        out += np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize(
            size, Image.BICUBIC), dtype=np.float64) / 4
    return np.ascontiguousarray(out.astype(np.uint8))


@pytest.mark.parametrize("size", [4, 5, 8, 13, 16, 32])
def test_phash_of_every_view_is_imagehash_phash_of_its_thumbnail(size):
    import imagehash

    hasher = ImageHasher("phash", size)
    rng = np.random.default_rng(size)
    for _ in range(10):
        thumbnails = rng.integers(0, 256, (3, 4 * size, 4 * size), dtype=np.uint8)
        assert hasher._phashes(thumbnails) == tuple(
            str(imagehash.phash(Image.fromarray(t), hash_size=size)) for t in thumbnails)


@pytest.mark.parametrize("kind", ["phash", "dhash", "ahash", "whash"])
def test_every_kind_gives_one_hash_per_view_whole_picture_first(kind):
    picture = smooth_picture(1)
    hashes = ImageHasher(kind, 8, 5).of_pixels(picture)
    assert len(hashes) == 5 and all(len(value) == 16 for value in hashes)
    assert hashes[0] == ImageHasher(kind, 8, 1).of_pixels(picture)[0]
    assert ImageHasher(kind, 8, 5).crops == (0.0, 0.005, 0.01, 0.015, 0.02)


def test_a_flat_picture_hashes_the_same_way_every_time():
    flat = np.full((64, 90), 200, dtype=np.uint8)
    hashes = ImageHasher("phash", 16, 12).of_pixels(flat)
    assert len(set(hashes)) == 1 and hashes == ImageHasher("phash", 16, 12).of_pixels(flat.copy())


@pytest.mark.parametrize("seed", range(6))
def test_a_cropped_copy_is_close_to_a_view_of_its_original(seed):
    hasher = ImageHasher("phash", 16, 12)
    picture = smooth_picture(seed)
    height, width = picture.shape[:2]
    crop = 0.02 + 0.006 * seed  # 2-5 % a side, as the mini-web plants them
    dx, dy = round(width * crop), round(height * crop)
    copy = picture[dy:height - dy, dx:width - dx]
    original, cropped = hasher.of_pixels(picture), hasher.of_pixels(copy)
    nearest = min(hamming(cropped[0], view) for view in original)
    assert nearest <= DedupConfig().near_distance < hamming(cropped[0], original[0])
    # ... while against other pictures, no view comes near.
    other = hasher.of_pixels(smooth_picture(seed + 100))
    assert min(hamming(a, b) for a in cropped for b in other) > 3 * DedupConfig().near_distance


def test_an_out_of_range_view_count_is_refused():
    assert ImageHasher("phash", 16, 0).validate()
    assert ImageHasher("phash", 16, 22).validate()
    assert ImageHasher("phash", 16, 21).validate() is None


def disc(bgr, radius=60, size=(240, 200), paper=(236, 240, 244)) -> np.ndarray:
    import cv2

    picture = np.empty((size[1], size[0], 3), dtype=np.uint8)
    picture[:] = paper
    cv2.circle(picture, (size[0] // 2, size[1] // 2), radius, bgr, -1, lineType=cv2.LINE_AA)
    return picture


def reencoded(picture: np.ndarray, quality=70) -> np.ndarray:
    import cv2

    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_discs_of_two_colours_hash_alike_and_their_colours_tell_them_apart():
    hasher, step = ImageHasher("phash", 16, 12), DedupConfig().colour_step
    red, black = disc((40, 40, 210)), disc((25, 25, 25))
    hashes_red, hashes_black = hasher.of_pixels(red), hasher.of_pixels(black)
    assert hamming(hashes_red[0], hashes_black[0]) <= DedupConfig().near_distance
    levels_red = colour_levels(hasher.colours(red), step)
    levels_black = colour_levels(hasher.colours(black), step)
    assert not colours_close(levels_red, levels_black).any()
    # A re-encoded copy agrees view by view.
    assert colours_close(levels_red, colour_levels(hasher.colours(reencoded(red)), step)).all()


@pytest.mark.parametrize("seed", range(4))
def test_a_cropped_copy_agrees_in_colour_with_the_view_its_hash_is_close_to(seed):
    hasher, config = ImageHasher("phash", 16, 12), DedupConfig()
    picture = smooth_picture(seed)
    height, width = picture.shape[:2]
    crop = 0.02 + 0.01 * seed
    dx, dy = round(width * crop), round(height * crop)
    copy = reencoded(picture[dy:height - dy, dx:width - dx])
    original, cropped = hasher.of_pixels(picture), hasher.of_pixels(copy)
    view = min(range(hasher.views), key=lambda v: hamming(cropped[0], original[v]))
    assert hamming(cropped[0], original[view]) <= config.near_distance
    levels = colour_levels(hasher.colours(picture), config.colour_step)
    copy_levels = colour_levels(hasher.colours(copy), config.colour_step)
    assert colours_close(levels[view], copy_levels[0])


def test_colours_are_one_code_per_view_and_a_grey_picture_has_neutral_cells():
    hasher = ImageHasher("phash", 16, 5)
    grey = np.full((50, 70), 128, dtype=np.uint8)
    codes = hasher.colours(grey)
    assert len(codes) == 5 and len(set(codes)) == 1
    cells = np.frombuffer(bytes.fromhex(codes[0]), np.uint8).reshape(COLOUR_VALUES // 3, 3)
    assert (cells[:, 1:] == 128).all()  # a* and b* of grey: zero, offset by 128
    assert codes == hasher.colours(np.stack([grey] * 3, axis=-1))
