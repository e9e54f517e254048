"""The Wikipedia path of `openwit queries`: throughput (MB of dump per second, one core) and
peak memory on generated dumps of two sizes, in one run.

    .venv/bin/python benchmarks/bench_queries.py [--sizes-mb 50 200] [--repeats 1]

Each dump is uncompressed MediaWiki XML: articles of Markov-chain prose over wordfreq's 30,000
most frequent English words (each word has 24 possible successors, drawn by frequency, so
common collocations recur as in real text), wrapped in the usual markup: an infobox with a
nested template, links with labels, <ref>s, headings, a table, a file and a category link.
Both sizes come from the same generator, so the larger dump repeats the smaller one's
vocabulary at four times the volume, which is how a dump grows (vocabulary grows far more
slowly than text).

Beside each dump, a page-view file in the hourly format gives the articles Zipf-distributed
views (the most viewed 700,000, the r-th most viewed 700,000 / r, in a random order), so about
10,000 titles pass the paper's 70 views whatever the dump's size, as an article's popularity
does not grow with the dump. `--no-pageviews` keeps every article title instead: then the
table itself grows with the dump (about 1.5 KB of peak memory per title on the in-memory
runner, which holds the finished table on one worker to sort it and number its rows).

`openwit queries --wikipedia-dump DUMP --pageviews VIEWS --wordnet none --wordfreq off` runs as
a child process on the in-memory DirectRunner (one core); its peak RSS comes from wait4().
Prints MB/s and the peak RSS of each size, and the peak RSS ratio largest / smallest (the goal:
at most 1.3, i.e. memory stays flat as the dump grows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

import numpy as np

VOCABULARY = 30_000
SUCCESSORS = 24
SENTENCE_WORDS = 14
PAGE_SENTENCES = 40


def markov_sentences(rng, words, count: int) -> list[str]:
    """`count` sentences of SENTENCE_WORDS words, generated position by position in bulk."""
    frequency = np.array([f for _, f in words])
    frequency = frequency / frequency.sum()
    successors = rng.choice(len(words), size=(len(words), SUCCESSORS), p=frequency)
    successor_weight = 1.0 / np.arange(1, SUCCESSORS + 1)
    successor_weight /= successor_weight.sum()
    ids = np.empty((count, SENTENCE_WORDS), dtype=np.int64)
    ids[:, 0] = rng.choice(len(words), size=count, p=frequency)
    for position in range(1, SENTENCE_WORDS):
        pick = rng.choice(SUCCESSORS, size=count, p=successor_weight)
        ids[:, position] = successors[ids[:, position - 1], pick]
    vocabulary = np.array([w for w, _ in words], dtype=object)
    return [" ".join(row).capitalize() + "." for row in vocabulary[ids]]


def page_text(rng, sentences: list[str], number: int) -> str:
    parts = [f"{{{{Infobox thing|name=Thing {number}|size={{{{convert|{number}|km}}}}}}}}\n"]
    for i, sentence in enumerate(sentences):
        if i % 10 == 0:
            parts.append(f"\n== Section {i // 10} ==\n")
        words = sentence.split(" ")
        if len(words) > 4 and i % 3 == 0:
            words[2] = f"[[{words[2]}|{words[2]}]]"
            words[4] = f"[[{words[4]}]]"
        parts.append(" ".join(words))
        if i % 7 == 0:
            parts.append(f"<ref>{{{{cite web|url=http://example.org/{number}|title=Source}}}}</ref>")
        parts.append(" ")
    parts.append("\n{| class=\"wikitable\"\n|-\n| a || b\n|}\n")
    parts.append(f"[[File:Thing{number}.jpg|thumb|A [[thing]]]]\n[[Category:Things]]\n")
    return "".join(parts)


def write_dump(path: str, megabytes: int, seed: int = 0) -> int:
    import wordfreq

    rng = np.random.default_rng(seed)
    words = list(wordfreq.get_frequency_dict("en", "large").items())
    words = [(w, f) for w, f in words if w.isalpha()][:VOCABULARY]
    target = megabytes * 1_000_000
    written = 0
    number = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">\n')
        while written < target:
            batch = markov_sentences(rng, words, 2000 * PAGE_SENTENCES)
            for start in range(0, len(batch), PAGE_SENTENCES):
                number += 1
                text = page_text(rng, batch[start:start + PAGE_SENTENCES], number)
                page = (f"  <page>\n    <title>Thing {number}</title>\n    <ns>0</ns>\n"
                        f"    <id>{number}</id>\n    <revision>\n      <text xml:space=\"preserve\">"
                        f"{escape(text)}</text>\n    </revision>\n  </page>\n")
                written += out.write(page)
                if written >= target:
                    break
        out.write("</mediawiki>\n")
    return os.path.getsize(path)


def write_pageviews(path: str, articles: int, seed: int = 0) -> None:
    import gzip

    rng = np.random.default_rng(seed)
    ranks = rng.permutation(articles) + 1
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for number, rank in enumerate(ranks, start=1):
            out.write(f"en Thing_{number} {700_000 // rank} 0\n")


def count_pages(dump: str) -> int:
    with open(dump, "rb") as f:
        return sum(1 for line in f if line.strip() == b"<page>")


def run_queries(dump: str, output: str, pageviews: str | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one `openwit queries` child process."""
    command = [os.path.join(os.path.dirname(sys.executable), "openwit"), "queries",
               "--wikipedia-dump", dump, "--wordnet", "none", "--wordfreq", "off",
               "--min-bigram-pmi", "20", "--output", output]
    if pageviews:
        command += ["--pageviews", pageviews]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    stderr = child.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"openwit queries failed:\n{stderr}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-pageviews", action="store_true",
                        help="keep every article title (no page-view file)")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for megabytes in args.sizes_mb:
            dump = os.path.join(folder, f"dump-{megabytes}.xml")
            started = time.monotonic()
            size = write_dump(dump, megabytes)
            pageviews = None
            if not args.no_pageviews:
                pageviews = os.path.join(folder, f"pageviews-{megabytes}.gz")
                write_pageviews(pageviews, count_pages(dump))
            print(f"generated {size / 1e6:.0f} MB dump in {time.monotonic() - started:.0f} s",
                  flush=True)
            walls, peaks = [], []
            for repeat in range(args.repeats):
                wall, peak = run_queries(dump, os.path.join(folder, f"out-{megabytes}-{repeat}"),
                                         pageviews)
                walls.append(wall)
                peaks.append(peak)
                print(f"  {megabytes} MB: {wall:.1f} s, peak RSS {peak / 2**20:.0f} MiB",
                      flush=True)
            os.remove(dump)
            results.append((megabytes, size, statistics.median(walls), statistics.median(peaks)))

    print(f"\n{'dump':>8} {'wall s':>8} {'MB/s':>7} {'peak RSS MiB':>13}")
    for megabytes, size, wall, peak in results:
        print(f"{megabytes:>6}MB {wall:>8.1f} {size / 1e6 / wall:>7.2f} {peak / 2**20:>13.0f}")
    smallest, largest = results[0], results[-1]
    ratio = largest[3] / smallest[3]
    titles = "every article title" if args.no_pageviews else "titles filtered by page views"
    print(f"\npeak RSS ratio {largest[0]} MB / {smallest[0]} MB: {ratio:.2f} (goal <= 1.3; "
          f"{titles})")


if __name__ == "__main__":
    main()
