"""The near-duplicate stage: how its cost grows, and a naive all-pairs search beside it.

    .venv/bin/python benchmarks/bench_near_dedup.py [--sizes 20000,200000] [--reference 5000]
        [--views 1] [--colour-step 4]

Hashes are made like a web crawl's: random 256-bit pHash-16 values (the default kind and
size), a tenth of them copies of another a few bits away (re-encodes), one in fifty a
placeholder picture shared by many URLs with a bit or two of noise (a hot bucket). With
`--views N` each image has N hashes, as the download stage makes them (the whole picture and
its crops): each view a few bits from the one before, a copy's views its source's with the
same few bits changed. Each view has a colour (27 cell values, as `ImageHasher.colours`): an
image's own random colours, a copy's its source's give or take one, and a placeholder's one
of 200 flat colours, so that its hot bucket is told apart by colour (`--colour-step 0`:
hashes alone).

1. `FindNearDuplicates` (the pipeline's stage, Beam's DirectRunner in memory, one process)
   on each size: hashes per second per core, and the time ratio of the largest size to the
   smallest (all-pairs would grow as the square of the size ratio).
2. On `--reference` hashes, the same stage against a naive all-pairs search (numpy, every
   pair's distance, then a union-find): the same removed set, and the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BITS = 256
DISTANCE = 8


def _views_of(value: int, views: int, rng: random.Random) -> list[int]:
    out = [value]
    for _ in range(views - 1):
        for bit in rng.sample(range(BITS), 6):
            value ^= 1 << bit
        out.append(value)
    return out


def _colour(cells: list[int]) -> str:
    return bytes(min(255, max(0, value)) for value in cells).hex()


def make_hashes(count: int, seed: int = 0, views: int = 1):
    """(hashes, colours) of `count` images, one of each per view."""
    from openwit.pipeline.images.image_hash import COLOUR_VALUES

    rng = random.Random(seed)
    placeholders = [_views_of(rng.getrandbits(BITS), views, rng) for _ in range(5)]
    flat = [[rng.randrange(256)] * COLOUR_VALUES for _ in range(200)]
    images, colours = [], []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.02:
            noise = (1 << rng.randrange(BITS)) * rng.randint(0, 1)
            image = [value ^ noise for value in rng.choice(placeholders)]
            colour = [_colour(rng.choice(flat))] * views
        elif draw < 0.12 and images:
            noise = 0
            for bit in rng.sample(range(BITS), rng.randint(0, DISTANCE)):
                noise ^= 1 << bit
            source = rng.randrange(len(images))
            image = [value ^ noise for value in images[source]]
            colour = [_colour([value + rng.randint(-1, 1) for value in bytes.fromhex(code)])
                      for code in colours[source]]
        else:
            image = _views_of(rng.getrandbits(BITS), views, rng)
            cells = [rng.randrange(256) for _ in range(COLOUR_VALUES)]
            colour = [_colour([value + rng.randint(-1, 1) for value in cells])
                      for _ in range(views)]
        images.append(image)
        colours.append(colour)
    return [(tuple(f"{value:064x}" for value in image), tuple(colour))
            for image, colour in zip(images, colours)]


def stage_losers(hashes, colour_step: int) -> tuple[set[str], float, float]:
    """(removed keys, wall seconds, CPU seconds) of FindNearDuplicates on the hashes."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from openwit.pipeline.images.config import DedupConfig
    from openwit.pipeline.images.near_dedup import FindNearDuplicates

    nodes = [(f"{i:09d}", i % 64, value, colours) for i, (value, colours) in enumerate(hashes)]
    out_dir = os.environ.get("TMPDIR", "/tmp")
    out = os.path.join(out_dir, f"bench-near-dedup-{os.getpid()}")
    started, cpu = time.monotonic(), time.process_time()
    with beam.Pipeline(options=PipelineOptions(runner="DirectRunner")) as pipeline:
        (pipeline
         | beam.Create(nodes, reshuffle=False)
         | FindNearDuplicates(DedupConfig(near_distance=DISTANCE, near_crops=True,
                                          colour_step=colour_step), BITS)
         | beam.Map(lambda kv: kv[1]["key"])
         | beam.io.WriteToText(out, shard_name_template=""))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    with open(out) as handle:
        removed = {line.strip() for line in handle if line.strip()}
    os.remove(out)
    return removed, wall, cpu


def all_pairs_losers(hashes, colour_step: int) -> tuple[set[str], float]:
    """The reference: every pair of views' distance (numpy, blocks) and colours, a union-find
    over the images, smallest key kept."""
    from openwit.pipeline.images.image_hash import (
        colour_levels, colours_close, distances, to_words)

    started = time.monotonic()
    owner = np.repeat(np.arange(len(hashes)), [len(views) for views, _ in hashes])
    words = to_words([value for views, _ in hashes for value in views], BITS)
    levels = colour_levels([code for _, codes in hashes for code in codes], colour_step or 1)
    parent = list(range(len(hashes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(words), 512):
        block = distances(words[start:start + 512], words)
        rows, cols = np.nonzero(block <= DISTANCE)
        rows = rows + start
        if colour_step:
            agree = colours_close(levels[rows], levels[cols])
            rows, cols = rows[agree], cols[agree]
        for i, j in zip(rows, cols):
            i, j = int(owner[i]), int(owner[j])
            if i < j:
                low, high = sorted((find(i), find(j)))
                parent[high] = low
    removed = {f"{i:09d}" for i in range(len(hashes)) if find(i) != i}
    return removed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--reference", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=1, help="hashes per image")
    parser.add_argument("--colour-step", type=int, default=4, help="0: hashes alone")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"machine: {os.cpu_count()} cores; pHash-16 ({BITS} bits), {args.views} views per "
          f"image, distance {DISTANCE}, colour step {args.colour_step}; medians of "
          f"{args.repeats}")
    medians = {}
    for size in sizes:
        hashes = make_hashes(size, views=args.views)
        runs = [stage_losers(hashes, args.colour_step) for _ in range(args.repeats)]
        wall = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        medians[size] = wall
        print(f"  {size:>8,} images: {wall:7.1f} s wall, {cpu:7.1f} s CPU, "
              f"{size / max(cpu, 1e-9):8,.0f} images/s per core, {len(runs[0][0]):,} removed")
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        print(f"  time ratio {large:,} / {small:,} images: {medians[large] / medians[small]:.1f} "
              f"(size ratio {large / small:g}; all-pairs would be {(large / small) ** 2:g})")
    if args.reference:
        hashes = make_hashes(args.reference, seed=1, views=args.views)
        stage = [stage_losers(hashes, args.colour_step) for _ in range(args.repeats)]
        reference = [all_pairs_losers(hashes, args.colour_step) for _ in range(args.repeats)]
        same = stage[0][0] == reference[0][0]
        stage_wall = statistics.median(r[1] for r in stage)
        reference_wall = statistics.median(r[1] for r in reference)
        print(f"  all-pairs reference on {args.reference:,} images: {reference_wall:.2f} s, "
              f"the stage {stage_wall:.2f} s (ratio reference/stage "
              f"{reference_wall / stage_wall:.2f}); same removed set: {same} "
              f"({len(reference[0][0]):,} removed)")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
