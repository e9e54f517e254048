"""Plain seeded langdetect vs pipeline.langid.LanguageIdentifier on alt-text-like captions.

    python benchmarks/bench_language.py --captions 5000 --repeats 3
    python benchmarks/bench_language.py --parquet candidates.parquet --captions 30000 \
        --batch 2048 --langdetect-captions 5000

With --parquet, captions are the `caption` column of that file (e.g. the curate benchmark's
candidates.parquet) instead of generated ones.  Speeds are captions per CPU second
(time.process_time), so other load on the machine matters less.

Captions are generated (seeded) from wordfreq's frequent words: ~90% English, ~10% other
languages, 1-20 words, some capitalised or upper case, some with file names, numbers or URLs.
They are unique and the identifier's answer cache is disabled, so every caption is detected;
its per-word n-gram cache is on (it is part of the method) and is cold only in the first
repeat.  Each engine of LanguageIdentifier (--engines numba,numpy) has its own identifier;
all methods run on the same captions in the same process, one after another, and each
engine's answers are compared with plain langdetect's (--langdetect-captions N: on the first
N only, it is slow) and with the first engine's.
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


def read_captions(path: str, count: int) -> list[str]:
    import pyarrow.parquet as pq

    captions = pq.read_table(path, columns=["caption"]).column("caption").to_pylist()
    return [c or "" for c in captions[:count]]


def timed(function, captions):
    start = time.process_time()
    answers = function(captions)
    return len(captions) / (time.process_time() - start), answers


def agreement(expected, got) -> tuple[int, int, float]:
    """Answers exactly the same (language and probability, or both None), answers with the
    same decision, largest probability difference where the language is the same."""
    exact = same = 0
    largest = 0.0
    for a, b in zip(expected, got):
        exact += a == b
        if a is None or b is None:
            same += a is b
            continue
        same += a[0] == b[0]
        if a[0] == b[0]:
            largest = max(largest, abs(a[1] - b[1]))
    return exact, same, largest


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
                        help="do not time plain langdetect (engines are compared to each other)")
    parser.add_argument("--langdetect-captions", type=int, default=0,
                        help="time plain langdetect and check agreement on only the first N "
                        "captions (0: all)")
    parser.add_argument("--engines", default="numba,numpy",
                        help="LanguageIdentifier engines to time, comma-separated")
    parser.add_argument("--single", action="store_true",
                        help="also time detect() one caption at a time (numba engine only)")
    args = parser.parse_args()

    from openwit.pipeline.text.langid import LanguageIdentifier, langdetect_reference

    if args.parquet:
        captions = read_captions(args.parquet, args.captions)
    else:
        captions = make_captions(args.captions, args.caption_seed)
    reference = langdetect_reference(args.seed)
    batch = args.batch or len(captions)
    identifiers = {}
    for engine in args.engines.split(","):
        start = time.perf_counter()
        identifiers[engine] = LanguageIdentifier(args.seed, cache_entries=0, engine=engine)
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        identifiers[engine].detect("warm up")  # numba: load (or compile) the kernel
        first_s = time.perf_counter() - start
        print(f"{engine}: setup {setup_s:.2f} s, first detect {first_s:.2f} s")

    def many(identifier):
        def run(texts):
            out = []
            for i in range(0, len(texts), batch):
                out.extend(identifier.detect_many(texts[i : i + batch]))
            return out

        return run

    def single(identifier):
        return lambda texts: [identifier.detect(t) for t in texts]

    # name -> (function, captions it runs on)
    few = captions[: args.langdetect_captions or len(captions)]
    methods = {}
    if not args.skip_langdetect:
        methods["langdetect"] = (lambda texts: [reference(t) for t in texts], few)
    for engine, identifier in identifiers.items():
        methods[f"{engine} detect_many"] = (many(identifier), captions)
        if args.single and engine == "numba":
            methods[f"{engine} detect"] = (single(identifier), captions)
    speeds: dict[str, list[float]] = {name: [] for name in methods}
    answers = {}
    print(f"{len(captions)} captions ({len(few)} for langdetect), seed {args.seed}, "
          f"answer cache off, detect_many batch {batch}")
    for repeat in range(args.repeats):
        line = []
        for name, (function, texts) in methods.items():
            speed, answers[name] = timed(function, texts)
            speeds[name].append(speed)
            line.append(f"{name} {speed:8.0f}/s")
        print(f"repeat {repeat + 1}: " + "  ".join(line))
    print()
    first = f"{next(iter(identifiers))} detect_many" if identifiers else None
    for name in methods:
        median = statistics.median(speeds[name])
        # Ratios within each repeat (same machine load), then the median over repeats.
        ratios = []
        for other in ("langdetect", "numpy detect_many"):
            if other in speeds and other != name:
                ratio = statistics.median(s / b for s, b in zip(speeds[name], speeds[other]))
                ratios.append(f"x{ratio:.3g} vs {other}")
        print(f"{name:20s} median {median:8.0f} captions per CPU second  " + "  ".join(ratios))
    print()
    for name in methods:
        if name == "langdetect":
            continue
        if "langdetect" in answers:
            exact, same, largest = agreement(answers["langdetect"], answers[name])
            print(f"{name:20s} vs langdetect: exactly the same {exact}/{len(few)}, same "
                  f"decision {same}/{len(few)}, largest prob diff {largest:.2e}")
        if first and name != first:
            exact, same, largest = agreement(answers[first], answers[name])
            print(f"{name:20s} vs {first}: exactly the same {exact}/{len(captions)}")
    if "langdetect" in answers:
        undetected = sum(a is None for a in answers["langdetect"])
        print(f"langdetect answered None for {undetected} of {len(few)} captions")


if __name__ == "__main__":
    main()
