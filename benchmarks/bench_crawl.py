"""Candidates from WAT files: `openwit candidates` against a plain single-process warcio +
json loop over the same file, FastWARC against warcio on the same records, and the reader's
peak memory on a small and a large file.

    .venv/bin/python benchmarks/bench_crawl.py [--large-mb 200] [--small-mb 50] [--repeats 3]

The WAT files are generated once (`--seed`) and cached under $OPENWIT_BENCH_CACHE (default
~/.cache/openwit-bench): gzip-per-record metadata records laid out as Common Crawl's, each page
with 20-60 links of which about a third are images (relative, root-relative, absolute), most
with alt text, some pairs repeated across pages, as real WAT records are.

Contenders, each on the large file, one core:
- the reference: warcio's ArchiveIterator + json.loads + the IMG@/src links with alt, resolved
  with urljoin (no normalisation, no dedup), in this process;
- the same loop with FastWARC's ArchiveIterator, and both libraries reading the records alone
  (to choose the library: both must read the same records and bytes);
- openwit's reader (`crawl/records.py` + `pages.py` + `extract.candidates_of_page`: what one
  Beam worker does per file, without Beam), in this process;
- `openwit candidates --wat FILE` (DirectRunner in memory: Beam's start, the dedup across the
  input and the parquet writing included), a subprocess.

Prints WAT MB/s per core and candidates/s per core, the ratios to the reference, and the
reader's peak RSS on the small and the large file (each in a fresh process), with their ratio
(goal at most 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
WORDS = ("red", "blue", "photo", "of", "a", "the", "cat", "dog", "house", "garden", "summer",
         "beach", "mountain", "city", "night", "old", "new", "car", "bike", "flower", "tree")


def cache_path(megabytes: int, seed: int) -> str:
    root = os.environ.get("OPENWIT_BENCH_CACHE", os.path.expanduser("~/.cache/openwit-bench"))
    return os.path.join(root, f"wat-{megabytes}mb-seed{seed}.warc.wat.gz")


def generate(path: str, megabytes: int, seed: int) -> None:
    """A WAT file of about `megabytes` MB (compressed), written once."""
    from openwit.pipeline.apps.miniweb.crawl import record

    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".inprogress"
    written, page = 0, 0
    recent: list[tuple[str, str]] = []
    with open(temporary, "wb") as out:
        while written < megabytes * 1_000_000:
            host = f"site{rng.randrange(5000)}.example"
            url = f"https://{host}/{'/'.join(rng.choices(WORDS, k=2))}/page{page}.html"
            links = []
            for _ in range(rng.randrange(20, 60)):
                if rng.random() < 0.35:
                    if recent and rng.random() < 0.1:
                        src, alt = rng.choice(recent)  # a pair another page shows too
                    else:
                        name = f"{rng.getrandbits(40):010x}.jpg"
                        src = rng.choice((f"/img/{name}", f"img/{name}",
                                          f"https://cdn{rng.randrange(50)}.example/{name}"))
                        alt = " ".join(rng.choices(WORDS, k=rng.randrange(0, 9)))
                        recent = (recent + [(src, alt)])[-200:]
                    link = {"path": "IMG@/src", "url": src}
                    if alt:
                        link["alt"] = alt
                else:
                    link = {"path": "A@/href", "url": f"/{'/'.join(rng.choices(WORDS, k=3))}",
                            "text": " ".join(rng.choices(WORDS, k=3))}
                links.append(link)
            document = {"Container": {"Filename": "bench.warc.gz", "Compressed": True},
                        "Envelope": {"Format": "WARC", "WARC-Header-Metadata": {
                            "WARC-Type": "response", "WARC-Target-URI": url,
                            "WARC-Date": "2024-06-01T00:00:00Z",
                            "WARC-Record-ID": f"<urn:uuid:{rng.getrandbits(64):016x}>"},
                            "Payload-Metadata": {"HTTP-Response-Metadata": {
                                "Headers": {"Content-Type": "text/html"},
                                "HTML-Metadata": {"Head": {"Title": "page"}, "Links": links}}}}}
            written += out.write(record({"WARC-Type": "metadata", "WARC-Target-URI": url,
                                         "Content-Type": "application/json"},
                                        json.dumps(document).encode()))
            page += 1
    os.replace(temporary, path)


def wat_file(megabytes: int, seed: int) -> str:
    path = cache_path(megabytes, seed)
    if not os.path.exists(path):
        print(f"generating {path} ...", flush=True)
        generate(path, megabytes, seed)
    return path


def records_only(path: str, library: str) -> tuple[int, int]:
    """(metadata records, their payload bytes): the library alone, no JSON."""
    count, size = 0, 0
    with open(path, "rb") as stream:
        if library == "warcio":
            from warcio.archiveiterator import ArchiveIterator

            for r in ArchiveIterator(stream):
                if r.rec_type == "metadata":
                    count, size = count + 1, size + len(r.content_stream().read())
        else:
            from fastwarc.warc import ArchiveIterator

            for r in ArchiveIterator(stream, record_types=32, parse_http=False):
                count, size = count + 1, size + len(r.reader.read())
    return count, size


def reference_loop(path: str, library: str) -> tuple[int, int]:
    """(records, image links with alt): the plain loop a user would write."""
    if library == "warcio":
        from warcio.archiveiterator import ArchiveIterator

        def records(stream):
            for r in ArchiveIterator(stream):
                if r.rec_type == "metadata":
                    yield r.rec_headers.get_header("WARC-Target-URI"), r.content_stream().read()
    else:
        from fastwarc.warc import ArchiveIterator

        def records(stream):
            for r in ArchiveIterator(stream, record_types=32, parse_http=False):
                yield r.headers.get("WARC-Target-URI"), r.reader.read()
    count, pairs = 0, 0
    with open(path, "rb") as stream:
        for page, payload in records(stream):
            count += 1
            document = json.loads(payload)
            html = (document["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]
                    .get("HTML-Metadata", {}))
            for link in html.get("Links", ()):
                if link.get("path") == "IMG@/src" and link.get("alt"):
                    urllib.parse.urljoin(page, link["url"])
                    pairs += 1
    return count, pairs


def openwit_reader(path: str) -> tuple[int, int]:
    """(records, candidates before dedup): what one worker does with a file."""
    from openwit.pipeline.crawl.config import CrawlConfig
    from openwit.pipeline.crawl.extract import CrawlCount, ExtractFromFile

    fn = ExtractFromFile(CrawlConfig(inputs=(path,)), buckets=16)
    counts: dict = {}
    with open(path, "rb") as stream:
        candidates = sum(1 for _ in fn._candidates(stream, counts))
    return counts.get(CrawlCount.RECORDS, 0), candidates


def openwit_job(path: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as output:
        started = time.monotonic()
        subprocess.run([os.path.join(VENV_BIN, "openwit"), "candidates", "--wat", path,
                        "--output", output], check=True, capture_output=True)
        wall = time.monotonic() - started
        with open(os.path.join(output, "stats.json")) as f:
            return wall, json.load(f)


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return time.monotonic() - started, result


def reader_peak_rss_mb(path: str) -> float:
    """Peak RSS of a fresh process that runs openwit's reader over `path`."""
    code = ("import resource, sys; sys.path.insert(0, %r); import bench_crawl; "
            "bench_crawl.openwit_reader(%r); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % (
        os.path.dirname(os.path.abspath(__file__)), path)
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mb", type=int, default=200)
    parser.add_argument("--small-mb", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    large, small = wat_file(args.large_mb, args.seed), wat_file(args.small_mb, args.seed)
    megabytes = os.path.getsize(large) / 1e6

    walls: dict[str, list[float]] = {}
    found: dict[str, tuple] = {}
    for repeat in range(args.repeats):
        for name, run in (("warcio, records only", lambda: records_only(large, "warcio")),
                          ("fastwarc, records only", lambda: records_only(large, "fastwarc")),
                          ("warcio + json (reference)", lambda: reference_loop(large, "warcio")),
                          ("fastwarc + json", lambda: reference_loop(large, "fastwarc")),
                          ("openwit reader (one worker's work)", lambda: openwit_reader(large))):
            wall, result = timed(run)
            walls.setdefault(name, []).append(wall)
            found[name] = result
            print(f"repeat {repeat + 1}: {name}: {wall:.1f} s, {result}", flush=True)
        wall, stats = openwit_job(large)
        walls.setdefault("openwit candidates (whole job)", []).append(wall)
        found["openwit candidates (whole job)"] = (stats["records"], stats["pairs"])
        print(f"repeat {repeat + 1}: openwit candidates: {wall:.1f} s, "
              f"{stats['pairs']:,} pairs, {stats['candidates']:,} candidates", flush=True)
    rss_small, rss_large = reader_peak_rss_mb(small), reader_peak_rss_mb(large)

    reference = "warcio + json (reference)"
    median = {name: statistics.median(values) for name, values in walls.items()}
    print(f"\nWAT file of {megabytes:.0f} MB ({found[reference][0]:,} records, "
          f"{found[reference][1]:,} image links with alt), median of {args.repeats}, one core:")
    for name, wall in median.items():
        records, pairs = found[name]
        what = "payload bytes" if "records only" in name else "pairs"
        print(f"  {name:<38} {wall:7.1f} s  {megabytes / wall:6.1f} MB/s/core  "
              f"{pairs / wall:11,.0f} {what}/s/core  x{median[reference] / wall:.2f} of the "
              f"reference  ({records:,} records, {pairs:,} {what})")
    print(f"  reader peak RSS: {rss_small:.0f} MB on {os.path.getsize(small) / 1e6:.0f} MB, "
          f"{rss_large:.0f} MB on {megabytes:.0f} MB: ratio {rss_large / rss_small:.2f} "
          "(goal <= 1.3)")


if __name__ == "__main__":
    main()
