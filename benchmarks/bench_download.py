"""Download throughput: `openwit build` against img2dataset's own `download()` on the same list.

    .venv/bin/python benchmarks/bench_download.py [--samples 3000] [--repeats 3] [--hosts 16]
                                                   [--trickle]

The mini-web (default pathologies: 404s, 429s, redirects, bombs, opt-outs, duplicates...;
slow and trickling responses only with --trickle) runs in its own process, on 127.0.0.1 and,
with --hosts N, the next N-1 loopback addresses, rows spread over them in turn (a many-host
list). Each repeat runs, in turn:

- img2dataset's CLI: 2 processes x 32 threads, 256 px border resize, webdataset output
  (its documented local set-up), timeout 3 s, 2 retries; it has no per-host limit;
- `openwit build` with no query table and `--languages any` (so the text stages are cheap),
  the same download settings, on the two-process DirectRunner and on the in-memory runner,
  with its default per-host limit;
- the same two-process build without a per-host limit (--max-per-host 1000), and with
  --robots-txt: what politeness costs.

Prints the median wall time, written images per second, the img2dataset / openwit wall ratio
and the politeness ratio (the build without a per-host limit / this one).
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VENV_BIN = os.path.dirname(sys.executable)


def serve_miniweb(samples: int, hosts: int, trickle: bool, folder: str, ready) -> None:
    from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig

    rates = {} if trickle else {"slow_headers_rate": 0.0, "trickle_rate": 0.0}
    config = WorldConfig(samples=samples, seed=0, eval_images_per_class=1, slow_seconds=30.0,
                         hosts=hosts, **rates)
    with MiniWeb(config, folder) as web:
        ready.put(str(web.candidates_path))
        web.serve_forever()


def run_img2dataset(candidates: str, output: str) -> tuple[float, int]:
    command = [
        os.path.join(VENV_BIN, "img2dataset"), "--url_list", candidates,
        "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
        "--output_format", "webdataset", "--output_folder", output,
        "--processes_count", "2", "--thread_count", "32", "--image_size", "256",
        "--resize_mode", "border", "--timeout", "3", "--retries", "2",
        "--number_sample_per_shard", "1000", "--min_image_size", "32",
        "--enable_wandb", "False",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True,
                   env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    wall = time.monotonic() - started
    written = sum(json.load(open(path))["successes"]
                  for path in glob.glob(os.path.join(output, "*_stats.json")))
    return wall, written


def timed_build(candidates: str, output: str, extra: list[str]) -> float:
    """`openwit build` of a mini-web list (no query table, any language, the benchmarks'
    download settings) into `output`; its wall time."""
    command = [
        os.path.join(VENV_BIN, "openwit"), "build", "--candidates", candidates,
        "--output", output, "--languages", "any", "--allow-network", "127.0.0.0/24",
        "--timeout", "3", "--retries", "2", "--download-threads", "32",
        "--samples-per-shard", "1000", *extra,
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def run_openwit(candidates: str, output: str, runner_args: list[str]) -> tuple[float, int]:
    wall = timed_build(candidates, output, runner_args)
    with open(os.path.join(output, "stats.json")) as f:
        return wall, json.load(f)["written"]


TWO_PROCESSES = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
UNLIMITED = "openwit build, 2 processes, no per-host limit"
CONTENDERS = {
    "img2dataset download() 2 proc x 32 threads": lambda c, o: run_img2dataset(c, o),
    "openwit build, DirectRunner 2 processes": lambda c, o: run_openwit(c, o, TWO_PROCESSES),
    "openwit build, DirectRunner in memory": lambda c, o: run_openwit(c, o, []),
    UNLIMITED: lambda c, o: run_openwit(c, o, [*TWO_PROCESSES, "--max-per-host", "1000"]),
    "openwit build, 2 processes, --robots-txt": lambda c, o: run_openwit(
        c, o, [*TWO_PROCESSES, "--robots-txt", "true"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=16,
                        help="loopback addresses the mini-web serves from (1: one host)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the contenders whose name contains TEXT (repeatable; "
                             "img2dataset and the no-limit build always run: the ratios' "
                             "references)")
    parser.add_argument("--trickle", action="store_true",
                        help="keep the mini-web's slow and trickling responses (0.3%% each)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="openwit-bench-")
    ready = multiprocessing.Queue()
    server = multiprocessing.Process(
        target=serve_miniweb, args=(args.samples, args.hosts, args.trickle,
                                    os.path.join(workdir, "web"), ready), daemon=True)
    server.start()
    candidates = ready.get(timeout=120)
    reference_name = next(iter(CONTENDERS))
    chosen = {name: run for name, run in CONTENDERS.items()
              if name in (reference_name, UNLIMITED) or not args.only
              or any(text in name for text in args.only)}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in chosen}
    try:
        for repeat in range(args.repeats):
            for name, run in chosen.items():
                output = os.path.join(workdir, f"out-{repeat}-{len(results[name])}-{hash(name)}")
                wall, written = run(candidates, output)
                results[name].append((wall, written))
                shutil.rmtree(output, ignore_errors=True)
                print(f"repeat {repeat + 1}: {name}: {wall:.1f} s, {written} written",
                      flush=True)
    finally:
        server.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.samples} candidates on {args.hosts} hosts"
          f"{' with trickling responses' if args.trickle else ''}, median of {args.repeats}:")
    reference = statistics.median(w for w, _ in results[reference_name])
    unlimited = statistics.median(w for w, _ in results[UNLIMITED])
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        written = statistics.median(n for _, n in runs)
        politeness = (f"  no-limit/this = {unlimited / wall:.2f}"
                      if name.startswith("openwit") else "")
        print(f"  {name:<48} {wall:6.1f} s  {written:6.0f} written  {written / wall:6.1f} "
              f"images/s  img2dataset/this = {reference / wall:.2f}{politeness}")


if __name__ == "__main__":
    main()
