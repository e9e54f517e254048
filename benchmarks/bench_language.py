"""Plain seeded langdetect vs pipeline.langid.LanguageIdentifier on alt-text-like captions.

    python benchmarks/bench_language.py --captions 5000 --repeats 3
    python benchmarks/bench_language.py --parquet candidates.parquet --captions 30000 \
        --batch 2048 --skip-langdetect

With --parquet, captions are the `caption` column of that file (e.g. the curate benchmark's
candidates.parquet) instead of generated ones.  Speeds are captions per CPU second
(time.process_time), so other load on the machine matters less.

Captions are generated (seeded) from wordfreq's frequent words: ~90% English, ~10% other
languages, 1-20 words, some capitalised or upper case, some with file names, numbers or URLs.
They are unique and the identifier's answer cache is disabled, so every caption is detected;
its per-word n-gram cache is on (it is part of the method) and is cold only in the first
repeat.  All three methods run on the same captions in the same process, one after another.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OTHER_LANGUAGES = ["fr", "de", "es", "it", "pt", "nl", "ru", "zh", "ja", "ar", "pl", "sv", "tr"]


def make_captions(count: int, seed: int) -> list[str]:
    import wordfreq

    rng = random.Random(seed)
    vocabulary = {lang: wordfreq.top_n_list(lang, 5000) for lang in ["en"] + OTHER_LANGUAGES}
    captions: list[str] = []
    seen: set[str] = set()
    while len(captions) < count:
        language = "en" if rng.random() < 0.9 else rng.choice(OTHER_LANGUAGES)
        words = vocabulary[language]
        common = words[: rng.choice([300, 1500, len(words)])]
        length = rng.choice([1, 2, 3, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20])
        caption = [rng.choice(common) for _ in range(length)]
        style = rng.random()
        if style < 0.4:
            caption[0] = caption[0].capitalize()
        elif style < 0.45:
            caption = [w.upper() for w in caption]
        elif style < 0.5:
            caption = [w.capitalize() for w in caption]
        extra = rng.random()
        if extra < 0.04:
            caption.append(f"IMG_{rng.randrange(10000):04d}.jpg")
        elif extra < 0.07:
            caption.append(str(rng.randrange(1900, 2030)))
        elif extra < 0.09:
            caption.append(f"https://example.com/images/{rng.randrange(10**6)}.png")
        text = " ".join(caption)
        if text not in seen:
            seen.add(text)
            captions.append(text)
    return captions


def plain_langdetect(seed: int):
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    from langdetect.lang_detect_exception import LangDetectException

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(seed)

    def detect(text: str) -> tuple[str, float] | None:
        detector = factory.create()
        detector.append(text)
        try:
            best = detector.get_probabilities()[0]
            return best.lang, float(best.prob)
        except (LangDetectException, IndexError):
            return None

    return detect


def read_captions(path: str, count: int) -> list[str]:
    import pyarrow.parquet as pq

    captions = pq.read_table(path, columns=["caption"]).column("caption").to_pylist()
    return [c or "" for c in captions[:count]]


def timed(function, captions):
    start = time.process_time()
    answers = function(captions)
    return len(captions) / (time.process_time() - start), answers


def agreement(expected, got) -> tuple[float, float, float]:
    """Share with the same decision, share with |prob diff| < 1e-3, largest prob diff."""
    same = close = 0
    largest = 0.0
    for a, b in zip(expected, got):
        if a is None or b is None:
            same += a is b
            close += a is b
            continue
        same += a[0] == b[0]
        diff = abs(a[1] - b[1]) if a[0] == b[0] else 1.0
        close += diff < 1e-3
        largest = max(largest, diff)
    return same / len(expected), close / len(expected), largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="langdetect seed")
    parser.add_argument("--caption-seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0,
                        help="texts per detect_many call (0: all at once)")
    parser.add_argument("--parquet", help="read captions from this file's `caption` column")
    parser.add_argument("--skip-langdetect", action="store_true",
                        help="time only detect_many (no agreement check)")
    args = parser.parse_args()

    from pipeline.langid import LanguageIdentifier

    if args.parquet:
        captions = read_captions(args.parquet, args.captions)
    else:
        captions = make_captions(args.captions, args.caption_seed)
    reference = plain_langdetect(args.seed)
    start = time.perf_counter()
    identifier = LanguageIdentifier(args.seed, cache_entries=0)
    setup_s = time.perf_counter() - start
    batch = args.batch or len(captions)

    def run_reference(texts):
        return [reference(t) for t in texts]

    def run_detect(texts):
        return [identifier.detect(t) for t in texts]

    def run_many(texts):
        out = []
        for i in range(0, len(texts), batch):
            out.extend(identifier.detect_many(texts[i : i + batch]))
        return out

    methods = {"langdetect": run_reference, "detect": run_detect, "detect_many": run_many}
    if args.skip_langdetect:
        methods = {"detect_many": run_many}
    speeds: dict[str, list[float]] = {name: [] for name in methods}
    answers = {}
    print(f"{len(captions)} captions, seed {args.seed}, answer cache off, "
          f"detect_many batch {batch}; LanguageIdentifier setup {setup_s:.2f} s")
    for repeat in range(args.repeats):
        line = []
        for name, function in methods.items():
            speed, answers[name] = timed(function, captions)
            speeds[name].append(speed)
            line.append(f"{name} {speed:8.0f}/s")
        print(f"repeat {repeat + 1}: " + "  ".join(line))
    print()
    if args.skip_langdetect:
        print(f"detect_many median {statistics.median(speeds['detect_many']):8.0f} "
              "captions per CPU second")
        return
    for name in methods:
        # Ratio within each repeat (same machine load), then the median over repeats.
        ratio = statistics.median(s / b for s, b in zip(speeds[name], speeds["langdetect"]))
        median = statistics.median(speeds[name])
        print(f"{name:12s} median {median:8.0f} captions/s  x{ratio:5.1f} vs langdetect")
    for name in ("detect", "detect_many"):
        same, close, largest = agreement(answers["langdetect"], answers[name])
        print(f"agreement {name:12s} same decision {same:.4%}  |prob diff|<1e-3 {close:.4%}  "
              f"largest diff {largest:.2e}")
    undetected = sum(a is None for a in answers["langdetect"])
    print(f"langdetect answered None for {undetected} captions")


if __name__ == "__main__":
    main()
