"""The measurement behind `--near-duplicate-distance`: planted near-duplicates against distinct
pictures, on the mini-web, per hash kind and size.

    .venv/bin/python benchmarks/near_dup_threshold.py [--samples 2000] [--seeds 0,1,2]
        [--hashes phash:16:12,phash:16:1,...]   (kind:size:views)  [--colour-steps 0,4]

Each world's "ok" images and planted near-duplicates (re-encoded, resized to 60–80 %,
cropped by 2–5 % a side) are put through the download stage's own image processing (256 px,
border) and hashed as the corpus hashes them. For each threshold it prints the recall of the
planted copies by edit, and how many pairs of distinct pictures would merge (pairs that show
different scenes, among every pair of "ok" images). With several views per image a pair's
distance is the smallest over all pairs of their views, as the dedup stage compares them, and
with a colour step over the pairs of views whose colours agree too (step 0: hashes alone).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 16, 20, 24)


FAR = np.iinfo(np.uint16).max


def view_distances(a, b, step: int) -> np.ndarray:
    """(n, m) smallest distance over the view pairs whose colours agree (every pair at step 0);
    a, b: ((n, views, words) hashes, (n, views) colour codes)."""
    from openwit.pipeline.images.image_hash import colour_levels, colours_close, distances

    (words_a, colours_a), (words_b, colours_b) = a, b
    best = None
    for i in range(words_a.shape[1]):
        levels_a = colour_levels(colours_a[:, i], step) if step else None
        for j in range(words_b.shape[1]):
            found = distances(words_a[:, i], words_b[:, j])
            if step:
                rows, cols = np.nonzero(found <= max(THRESHOLDS))
                levels_b = colour_levels(colours_b[:, j], step)
                disagree = ~colours_close(levels_a[rows], levels_b[cols])
                found[rows[disagree], cols[disagree]] = FAR
            best = found if best is None else np.minimum(best, found)
    return best


def _spread(distances) -> str:
    """Median and largest distance of the planted copies whose views' colours agree (FAR: no
    pair of their views does), and how many do not."""
    values = np.asarray(distances)
    hashed = values[values != FAR]
    text = f"median {np.median(hashed):.0f} max {hashed.max()}" if len(hashed) else "no distance"
    if len(hashed) < len(values):
        text += f" ({len(values) - len(hashed)} colours disagree)"
    return text


def measure(seed: int, samples: int, kind: str, size: int, views: int, steps):
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
        return to_words(hashes, bits)[None], np.asarray(fields["colours"])[None]

    ok, planted, concepts = {}, [], {}
    for row in world.rows:
        if row.kind not in ("ok", "near_dup"):
            continue
        fields, problem = process(render_item(row.spec))
        if problem is not None:
            continue
        if row.kind == "ok":
            ok[row.url] = words(fields)
            concepts[row.url] = concept(row.spec)
        else:
            planted.append((row.duplicate_of, words(fields), row.spec.edit))
    everything = tuple(np.concatenate([value[part] for value in ok.values()]) for part in (0, 1))
    results = {}
    for step in steps:
        by_edit = collections.defaultdict(list)
        for source, value, edit in planted:
            if source in ok:
                by_edit["re-encode" if edit == "none" else edit].append(
                    int(view_distances(ok[source], value, step)[0, 0]))
        matrix = view_distances(everything, everything, step).astype(np.int32)
        upper = np.triu_indices(len(everything[0]), k=1)
        ids = np.unique([str(c) for c in concepts.values()], return_inverse=True)[1].ravel()
        results[step] = by_edit, matrix[upper], ids[upper[0]] == ids[upper[1]]
    return results


def concept(spec) -> tuple:
    """What a caption may say of a picture: two pictures that differ here are different
    concepts; pictures of one concept differ only in placement and texture (the seed)."""
    return (spec.shape, spec.digit, spec.colour, spec.background, spec.tone, spec.count,
            spec.position, spec.size, spec.style)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hashes", default="phash:16:12,phash:16:1,phash:8:12,phash:12:12")
    parser.add_argument("--colour-steps", default="0,4",
                        help="colour steps to compare with (0: hashes alone)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = [int(s) for s in args.colour_steps.split(",")]
    for spec in args.hashes.split(","):
        kind, size, views = (spec.split(":") + ["1"])[:3]
        measured = [measure(seed, args.samples, kind, int(size), int(views), steps)
                    for seed in seeds]
        for step in steps:
            report(kind, size, views, step, args, [m[step] for m in measured])
    return 0


def report(kind, size, views, step, args, measured) -> None:
    by_edit, distinct, same, pairs = collections.defaultdict(list), [], [], 0
    for edits, upper, same_concept in measured:
        for edit, values in edits.items():
            by_edit[edit] += values
        distinct.append(upper)
        same.append(same_concept)
        pairs += len(upper)
    by_edit["all planted"] = [d for edit in list(by_edit) for d in by_edit[edit]]
    distinct, same = np.concatenate(distinct), np.concatenate(same)
    colour = f"colour step {step}" if step else "hashes alone"
    print(f"\n{kind} {size}x{size} ({int(size) ** 2} bits), {views} views, {colour}, worlds "
          f"{args.seeds} of {args.samples} rows: {pairs:,} pairs of distinct pictures")
    print(f"  {'distance':>8}  " + "  ".join(f"{edit:>10}" for edit in sorted(by_edit))
          + "  distinct pairs merged (of them, other concepts)")
    for threshold in THRESHOLDS:
        recalls = "  ".join(
            f"{np.mean(np.asarray(by_edit[edit]) <= threshold):>10.2f}" for edit in sorted(by_edit))
        merged = distinct <= threshold
        print(f"  {threshold:>8}  {recalls}  {int(merged.sum()):>8,} ({int((merged & ~same).sum()):,})")
    print("  planted copies: " + ", ".join(f"{edit} n={len(v)} {_spread(v)}"
                                           for edit, v in sorted(by_edit.items())))


if __name__ == "__main__":
    sys.exit(main())
