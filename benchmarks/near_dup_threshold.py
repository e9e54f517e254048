"""The measurement behind `--near-duplicate-distance`: planted near-duplicates against distinct
pictures, on the mini-web, per hash kind and size.

    .venv/bin/python benchmarks/near_dup_threshold.py [--samples 2000] [--seeds 0,1,2]
        [--hashes phash:16:12,phash:16:1,...]   (kind:size:views)

Each world's "ok" images and planted near-duplicates (re-encoded, resized to 60–80 %,
cropped by 2–5 % a side) are put through the download stage's own image processing (256 px,
border) and hashed as the corpus hashes them. For each threshold it prints the recall of the
planted copies by edit, and how many pairs of distinct pictures would merge (pairs that show
different scenes, among every pair of "ok" images). With several views per image a pair's
distance is the smallest over all pairs of their views, as the dedup stage compares them.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 16, 20, 24)


def view_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) smallest distance over view pairs; a: (n, views, words), b: (m, views, words)."""
    from openwit.pipeline.images.image_hash import distances

    best = None
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            found = distances(a[:, i], b[:, j])
            best = found if best is None else np.minimum(best, found)
    return best


def measure(seed: int, samples: int, kind: str, size: int, views: int):
    from openwit.pipeline.apps.miniweb.render import render_item
    from openwit.pipeline.apps.miniweb.world import WorldConfig, generate_world
    from openwit.pipeline.images.config import DownloadConfig
    from openwit.pipeline.images.download import ImageProcessor, load_resizer
    from openwit.pipeline.images.image_hash import to_words

    world = generate_world(WorldConfig(samples=samples, seed=seed), "http://127.0.0.1:1")
    process = ImageProcessor(DownloadConfig(hash_kind=kind, hash_size=size, hash_views=views),
                             load_resizer)
    bits = size * size

    def words(fields):
        hashes = [fields["phash"], *fields["phash_crops"]]
        return to_words(hashes, bits)[None]

    ok, planted = {}, []
    for row in world.rows:
        if row.kind not in ("ok", "near_dup"):
            continue
        fields, problem = process(render_item(row.spec))
        if problem is not None:
            continue
        if row.kind == "ok":
            ok[row.url] = words(fields)
        else:
            planted.append((row.duplicate_of, words(fields), row.spec.edit))
    by_edit = collections.defaultdict(list)
    for source, value, edit in planted:
        if source in ok:
            by_edit["re-encode" if edit == "none" else edit].append(
                int(view_distances(ok[source], value)[0, 0]))
    everything = np.concatenate(list(ok.values()))
    matrix = view_distances(everything, everything).astype(np.int32)
    upper = matrix[np.triu_indices(len(everything), k=1)]
    return by_edit, upper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hashes", default="phash:16:12,phash:16:1,phash:8:12,phash:12:12")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for spec in args.hashes.split(","):
        kind, size, views = (spec.split(":") + ["1"])[:3]
        by_edit, distinct, pairs = collections.defaultdict(list), [], 0
        for seed in seeds:
            edits, upper = measure(seed, args.samples, kind, int(size), int(views))
            for edit, values in edits.items():
                by_edit[edit] += values
            distinct.append(upper)
            pairs += len(upper)
        by_edit["all planted"] = [d for edit in list(by_edit) for d in by_edit[edit]]
        distinct = np.concatenate(distinct)
        print(f"\n{kind} {size}x{size} ({int(size) ** 2} bits), {views} views, worlds {args.seeds} of "
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
