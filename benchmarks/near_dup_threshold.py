"""The measurement behind `--near-duplicate-distance`: planted near-duplicates against distinct
pictures, on the mini-web, per hash kind and size.

    .venv/bin/python benchmarks/near_dup_threshold.py [--samples 2000] [--seeds 0,1,2]

Each world's "ok" images and planted near-duplicates (re-encoded, resized to 60–80 %,
cropped by 2–5 % a side) are put through the download stage's own image processing (256 px,
border) and hashed as the corpus hashes them. For each threshold it prints the recall of the
planted copies by edit, and how many pairs of distinct pictures would merge (pairs that show
different scenes, among every pair of "ok" images).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 16, 20, 24)


def measure(seed: int, samples: int, kind: str, size: int):
    from openwit.pipeline.apps.miniweb.render import render_item
    from openwit.pipeline.apps.miniweb.world import WorldConfig, generate_world
    from openwit.pipeline.images.config import DownloadConfig
    from openwit.pipeline.images.download import ImageProcessor, load_resizer
    from openwit.pipeline.images.image_hash import distances, hamming, to_words

    world = generate_world(WorldConfig(samples=samples, seed=seed), "http://127.0.0.1:1")
    process = ImageProcessor(DownloadConfig(hash_kind=kind, hash_size=size), load_resizer)
    ok, planted = {}, []
    for row in world.rows:
        if row.kind not in ("ok", "near_dup"):
            continue
        fields, problem = process(render_item(row.spec))
        if problem is not None:
            continue
        if row.kind == "ok":
            ok[row.url] = fields["phash"]
        else:
            planted.append((row.duplicate_of, fields["phash"], row.spec.edit))
    by_edit = collections.defaultdict(list)
    for source, value, edit in planted:
        if source in ok:
            by_edit["re-encode" if edit == "none" else edit].append(hamming(ok[source], value))
    words = to_words(list(ok.values()), size * size)
    matrix = distances(words, words).astype(np.int32)
    upper = matrix[np.triu_indices(len(words), k=1)]
    return by_edit, upper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hashes", default="phash:8,phash:16,dhash:16")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for spec in args.hashes.split(","):
        kind, size = spec.split(":")
        by_edit, distinct, pairs = collections.defaultdict(list), [], 0
        for seed in seeds:
            edits, upper = measure(seed, args.samples, kind, int(size))
            for edit, values in edits.items():
                by_edit[edit] += values
            distinct.append(upper)
            pairs += len(upper)
        distinct = np.concatenate(distinct)
        print(f"\n{kind} {size}x{size} ({int(size) ** 2} bits), worlds {args.seeds} of "
              f"{args.samples} rows: {pairs:,} pairs of distinct pictures")
        print(f"  {'distance':>8}  " + "  ".join(f"{edit:>10}" for edit in sorted(by_edit))
              + "  distinct pairs merged")
        for threshold in THRESHOLDS:
            recalls = "  ".join(
                f"{np.mean(np.asarray(by_edit[edit]) <= threshold):>10.2f}" for edit in sorted(by_edit))
            print(f"  {threshold:>8}  {recalls}  {int((distinct <= threshold).sum()):>8,}")
        print("  planted copies: " + ", ".join(f"{edit} n={len(v)} median {np.median(v):.0f} "
                                               f"max {max(v)}" for edit, v in sorted(by_edit.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
