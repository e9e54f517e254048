"""`openwit curate` throughput and memory at two candidate-list sizes, and query matching alone
(the Aho-Corasick automaton against MetaCLIP's reference loop), in one run.

    .venv/bin/python benchmarks/bench_curate.py [--data /tmp/openwit-bench-curate]
        [--sizes 100000 1000000] [--repeats 3] [--match-sample 200] [--word-sample 100000]
        [--queries-count 500000] [--match-mode word] [--per-query-cap N]
        [--runner-args "--languages any"]  (extra flags for `openwit curate`; default none:
                                             the in-memory DirectRunner, all defaults)

Data: `benchmarks/curate_data.py` (a 500k-query table built like the CLIP paper's list from
wordfreq, WordNet and bigrams, and alt-text-like captions), generated once into --data and
reused while its manifest matches (nothing is written inside the repository).

Curate: each repeat runs `openwit curate` in a fresh child process. Wall time is the child's
lifetime. Beam's multi-process runner starts worker processes, so the whole process tree is
measured: /proc is polled (every --poll seconds) for the child and all its descendants; peak RSS
is the largest sum of their resident sets at one poll (shared pages count once per process, so
this errs high), CPU is the larger of the tree's polled user+sys and the child's `wait4()`
rusage (which includes only the descendants it reaped). `wait4()`'s ru_maxrss (the largest
single process) is printed beside it. Medians over the repeats: candidates/s (wall),
candidates per CPU-second ("per core"; goal 10,000), peak RSS, and the peak RSS ratio of the
largest size to the smallest (goal <= 1.3).

Matching: `QueryMatcher(queries, mode="metaclip")` against `metaclip_reference_match` on a
seeded sample of --match-sample captions: ms per caption for each, the speed ratio, the
automaton's build time, and agreement (captions whose id lists are identical; every one must
agree, else the exit status is 1). Word mode (`QueryMatcher(queries).match_ids`) is timed on
--word-sample captions. The results go to --data/bench_curate-results.json and a markdown
snippet for benchmarks/RESULTS.md is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import curate_data  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
# The in-memory DirectRunner: one process, so candidates per CPU-second is the per-core figure
# and peak RSS is one process's. Pass e.g. "--direct_running_mode multi_processing
# --direct_num_workers 2" to measure the two-process runner instead.
DEFAULT_RUNNER_ARGS = ""
GOAL_PER_CORE = 10_000
GOAL_MEMORY_RATIO = 1.3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- process tree


def _stat(pid: int):
    """(ppid, user+sys seconds, rss bytes) of a process from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # after "pid (comm) "
    # fields[0] is state (field 3): ppid is field 4, utime 14, stime 15, rss 24.
    return (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            int(fields[21]) * PAGE_SIZE)


class TreeSampler(threading.Thread):
    """Polls /proc for a process and its descendants: peak summed RSS, per-process CPU."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.tree = {root}
        self.outside: set[int] = set()
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_single = 0
        self.peak_processes = 1
        self.polls = 0
        self._halt = threading.Event()

    def poll(self) -> None:
        try:
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return
        stats = {}
        for pid in pids:
            if pid in self.outside:
                continue
            stat = _stat(pid)
            if stat is None:
                continue
            stats[pid] = stat
        # New processes: in the tree when their parent is (parents come before children in
        # pid order except after pid wrap-around, so iterate until nothing changes).
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in stats.items():
                if pid not in self.tree and ppid in self.tree:
                    self.tree.add(pid)
                    changed = True
        total, live = 0, 0
        for pid, (_, cpu, rss) in stats.items():
            if pid in self.tree:
                self.cpu[pid] = cpu
                total += rss
                live += 1
                self.peak_single = max(self.peak_single, rss)
            else:
                self.outside.add(pid)
        self.peak_rss = max(self.peak_rss, total)
        self.peak_processes = max(self.peak_processes, live)
        self.polls += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def run_measured(command: list[str], interval: float, log_path: str) -> dict:
    """Run `command`; wall, CPU and memory of its process tree. Raises on failure."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(child.pid, interval)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        sampler.stop()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        with open(log_path, "rb") as f:
            tail = f.read()[-6000:].decode("utf-8", errors="replace")
        raise RuntimeError(f"exit status {child.returncode}: {shlex.join(command)}\n"
                           f"--- last output ---\n{tail}")
    wait4_cpu = usage.ru_utime + usage.ru_stime
    return {
        "wall_s": wall,
        "cpu_s": max(wait4_cpu, sampler.cpu_seconds),
        "cpu_wait4_s": wait4_cpu,
        "cpu_tree_polled_s": sampler.cpu_seconds,
        "peak_rss_tree_bytes": sampler.peak_rss,
        "peak_rss_single_polled_bytes": sampler.peak_single,
        "maxrss_wait4_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
        "processes": len(sampler.tree),
        "peak_live_processes": sampler.peak_processes,
        "polls": sampler.polls,
    }


# --------------------------------------------------------------------------- curate


def curate_command(candidates: str, queries: str, output: str, args) -> list[str]:
    command = [os.path.join(VENV_BIN, "openwit"), "curate", "--candidates", candidates,
               "--queries", queries, "--output", output, "--match-mode", args.match_mode,
               "--seed", str(args.seed)]
    if args.per_query_cap is not None:
        command += ["--per-query-cap", str(args.per_query_cap)]
    return command + shlex.split(args.runner_args)


def curate_available() -> str | None:
    """None when `openwit curate --help` works, else why not."""
    openwit = os.path.join(VENV_BIN, "openwit")
    if not os.path.exists(openwit):
        return f"{openwit} does not exist (pip install -e . first)"
    done = subprocess.run([openwit, "curate", "--help"], capture_output=True, text=True,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if done.returncode != 0:
        return (done.stderr or done.stdout)[-2000:]
    return None


def read_curate_output(output: str) -> dict:
    import pyarrow.parquet as pq

    with open(os.path.join(output, "stats.json")) as f:
        stats = json.load(f)
    rows = pq.read_table(os.path.join(output, "curated.parquet")).num_rows
    if "curated" in stats and rows != stats["curated"]:
        print(f"  warning: curated.parquet has {rows} rows, stats.json says {stats['curated']}",
              flush=True)
    return {"input_rows": stats.get("input_rows"), "curated": stats.get("curated", rows),
            "curated_parquet_rows": rows, "pipeline_wall_s": stats.get("wall_seconds"),
            "stages": stats.get("stages")}


def bench_curate(args, paths: dict[str, str], folder: str) -> list[dict]:
    results = []
    for size in args.sizes:
        candidates = candidates_of_size(paths, size, folder)
        runs = []
        for repeat in range(args.repeats):
            output = os.path.join(folder, "runs", f"{size}-{repeat}")
            shutil.rmtree(output, ignore_errors=True)
            os.makedirs(os.path.dirname(output), exist_ok=True)
            measured = run_measured(curate_command(candidates, paths["queries"], output, args),
                                    args.poll, output + ".log")
            measured.update(read_curate_output(output))
            if measured["input_rows"] not in (None, size):
                print(f"  warning: stats.json input_rows {measured['input_rows']} != {size}")
            runs.append(measured)
            print(f"  {size:>9,} candidates, repeat {repeat + 1}: {measured['wall_s']:.1f} s wall, "
                  f"{measured['cpu_s']:.1f} s CPU, peak RSS {measured['peak_rss_tree_bytes'] / 2**20:.0f}"
                  f" MiB (tree of {measured['processes']}), {measured['curated']:,} curated",
                  flush=True)
            if not args.keep_outputs:
                shutil.rmtree(output, ignore_errors=True)
        wall = statistics.median(r["wall_s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        results.append({
            "size": size, "runs": runs, "wall_s": wall, "cpu_s": cpu,
            "candidates_per_s": size / wall, "candidates_per_cpu_s": size / cpu,
            "peak_rss_tree_bytes": statistics.median(r["peak_rss_tree_bytes"] for r in runs),
            "maxrss_wait4_bytes": statistics.median(r["maxrss_wait4_bytes"] for r in runs),
            "curated": statistics.median(r["curated"] for r in runs),
        })
    return results


def candidates_of_size(paths: dict[str, str], size: int, folder: str) -> str:
    import pyarrow.parquet as pq

    if pq.ParquetFile(paths["candidates"]).metadata.num_rows == size:
        return paths["candidates"]
    if size == 100_000:
        return paths["candidates-100k"]
    return curate_data.first_rows(paths["candidates"], size,
                                  os.path.join(folder, f"candidates-{size}.parquet"))


# --------------------------------------------------------------------------- matching


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def timed_loop(function, texts, min_seconds: float = 1.0) -> float:
    """Seconds per text: whole passes over `texts` until at least `min_seconds` have passed."""
    passes, started = 0, time.perf_counter()
    while True:
        for text in texts:
            function(text)
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / (passes * len(texts))


def bench_matching(args, paths: dict[str, str]) -> dict:
    import pyarrow.parquet as pq

    from openwit.pipeline.text.match import QueryMatcher, metaclip_reference_match
    from openwit.queries.table import load_query_strings

    captions = pq.read_table(paths["candidates"], columns=["caption"]).column("caption").to_pylist()
    captions = ["" if c is None else c for c in captions]
    rng = np.random.default_rng(args.seed)
    sample = [captions[i] for i in
              rng.choice(len(captions), min(args.match_sample, len(captions)), replace=False)]
    result: dict = {"sample": len(sample)}

    entries = load_query_strings(paths["queries"], exact=True)
    result["entries"] = len(entries)
    before, started = rss_now(), time.perf_counter()
    matcher = QueryMatcher(entries, mode="metaclip")
    result["metaclip_build_s"] = time.perf_counter() - started
    result["metaclip_build_rss_bytes"] = rss_now() - before
    print(f"metaclip automaton: {len(entries):,} entries built in "
          f"{result['metaclip_build_s']:.1f} s (+{result['metaclip_build_rss_bytes'] / 2**20:.0f} MiB)",
          flush=True)

    reference, started = [], time.perf_counter()
    for text in sample:
        reference.append(metaclip_reference_match(text, entries))
    naive = (time.perf_counter() - started) / len(sample)
    automaton = [matcher.match_ids(text) for text in sample]
    agree = sum(a == b for a, b in zip(reference, automaton))
    disagreements = [{"caption": t, "reference": r, "automaton": a}
                     for t, r, a in zip(sample, reference, automaton) if r != a][:5]
    per_caption = statistics.median(timed_loop(matcher.match_ids, sample)
                                    for _ in range(max(1, args.repeats)))
    result.update({
        "naive_ms_per_caption": naive * 1e3,
        "automaton_ms_per_caption": per_caption * 1e3,
        "speedup": naive / per_caption,
        "agreement": agree,
        "disagreements": disagreements,
        "sample_with_match": sum(bool(r) for r in reference),
        "mean_matches": statistics.fmean(len(r) for r in reference) if reference else 0.0,
    })
    print(f"metaclip matching on {len(sample)} captions: reference loop "
          f"{result['naive_ms_per_caption']:.1f} ms/caption, automaton "
          f"{result['automaton_ms_per_caption']:.4f} ms/caption ({result['speedup']:,.0f}x); "
          f"agreement {agree}/{len(sample)}", flush=True)

    bulk = captions[:args.word_sample]
    seconds = statistics.median(timed_loop(matcher.match_ids, bulk, 0.0)
                                for _ in range(max(1, args.repeats)))
    result["metaclip_captions_per_s"] = 1 / seconds
    result["metaclip_matched_share"] = sum(bool(matcher.match_ids(t)) for t in bulk) / len(bulk)
    del matcher

    words = load_query_strings(paths["queries"])
    started = time.perf_counter()
    word_matcher = QueryMatcher(words)
    result["word_build_s"] = time.perf_counter() - started
    seconds = statistics.median(timed_loop(word_matcher.match_ids, bulk, 0.0)
                                for _ in range(max(1, args.repeats)))
    result.update({"word_sample": len(bulk), "word_captions_per_s": 1 / seconds,
                   "word_matched_share": sum(bool(word_matcher.match_ids(t)) for t in bulk)
                   / len(bulk)})
    print(f"on {len(bulk):,} captions: metaclip automaton {result['metaclip_captions_per_s']:,.0f} "
          f"captions/s ({result['metaclip_matched_share']:.1%} match), word mode "
          f"{result['word_captions_per_s']:,.0f} captions/s ({result['word_matched_share']:.1%} "
          f"match; built in {result['word_build_s']:.1f} s)", flush=True)
    return result


# --------------------------------------------------------------------------- report


def machine() -> str:
    cores = os.cpu_count()
    try:
        cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cores} cores, {memory:.0f} GiB, {platform.system()} {platform.release()} "
            f"{platform.machine()}, Python {platform.python_version()}")


def markdown(args, command: str, curate: list[dict] | None, match: dict | None,
             date: str) -> str:
    lines = ["## Curate: `openwit curate` and query matching", "",
             f"Command: `{command}`", f"Machine: {machine()}.", f"Date: {date}.", ""]
    if curate:
        lines += [f"`openwit curate` ({args.match_mode} mode, runner args "
                  f"`{args.runner_args or '(none: in-memory)'}`), {args.queries_count:,} queries, "
                  f"median of {args.repeats}; CPU and peak RSS of the whole process tree "
                  "(/proc polled, plus wait4):", "",
                  "| candidates | median wall | candidates/s | CPU s | candidates per CPU-s "
                  "| peak RSS (tree) | max single process (wait4) | curated |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in curate:
            lines.append(f"| {r['size']:,} | {r['wall_s']:.1f} s | {r['candidates_per_s']:,.0f} | "
                         f"{r['cpu_s']:.1f} | {r['candidates_per_cpu_s']:,.0f} | "
                         f"{r['peak_rss_tree_bytes'] / 2**20:,.0f} MiB | "
                         f"{r['maxrss_wait4_bytes'] / 2**20:,.0f} MiB | {r['curated']:,.0f} |")
        best = curate[-1]["candidates_per_cpu_s"]
        summary = ""
        if len(curate) > 1:
            ratio = curate[-1]["peak_rss_tree_bytes"] / curate[0]["peak_rss_tree_bytes"]
            summary = (f"**Peak RSS ratio {curate[-1]['size']:,} / {curate[0]['size']:,}: "
                       f"{ratio:.2f}** (goal <= {GOAL_MEMORY_RATIO}). ")
        lines += ["", summary + f"Throughput at {curate[-1]['size']:,}: **{best:,.0f} candidates "
                  f"per CPU-second** (goal {GOAL_PER_CORE:,}; {best / GOAL_PER_CORE:.2f} of it).",
                  ""]
    if match:
        lines += [f"Matching alone ({match['entries']:,} queries, one core): MetaCLIP's reference "
                  f"loop {match['naive_ms_per_caption']:.1f} ms per caption, the metaclip-mode "
                  f"automaton {match['automaton_ms_per_caption'] * 1e3:.1f} µs per caption "
                  f"(**{match['speedup']:,.0f}x**; built in {match['metaclip_build_s']:.1f} s, "
                  f"+{match['metaclip_build_rss_bytes'] / 2**20:.0f} MiB); identical id lists on "
                  f"**{match['agreement']}/{match['sample']}** sampled captions. On "
                  f"{match['word_sample']:,} captions: metaclip mode "
                  f"{match['metaclip_captions_per_s']:,.0f} captions/s, word mode "
                  f"{match['word_captions_per_s']:,.0f} captions/s "
                  f"({match['word_matched_share']:.0%} of captions match a query).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "openwit-bench-curate"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--match-sample", type=int, default=200,
                        help="captions for the reference-loop comparison (~36 ms each)")
    parser.add_argument("--word-sample", type=int, default=100_000,
                        help="captions for the captions/s of each matching mode")
    parser.add_argument("--queries-count", type=int, default=curate_data.DEFAULT_QUERIES)
    parser.add_argument("--candidates-count", type=int, default=None,
                        help="candidates to generate (default: the largest size); smaller "
                             "sizes are the first rows of that list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--match-mode", choices=["word", "metaclip"], default="word",
                        help="passed to openwit curate")
    parser.add_argument("--per-query-cap", type=int, default=None,
                        help="passed to openwit curate (default: its own)")
    parser.add_argument("--runner-args", default=DEFAULT_RUNNER_ARGS,
                        help="Beam flags for openwit curate, one string (use --runner-args= for "
                             "none, i.e. the in-memory runner)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between /proc polls")
    parser.add_argument("--skip-curate", action="store_true")
    parser.add_argument("--skip-match", action="store_true")
    parser.add_argument("--keep-outputs", action="store_true", help="keep curate's outputs")
    args = parser.parse_args()
    args.sizes = sorted(args.sizes)
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    date = datetime.date.today().isoformat()

    generated = max(args.candidates_count or 0, args.sizes[-1])
    folder = os.path.join(args.data, f"q{args.queries_count}-c{generated}-s{args.seed}")
    started = time.monotonic()
    paths = curate_data.generate(folder, args.queries_count, generated, args.seed, verbose=True)
    print(f"data in {folder} ({time.monotonic() - started:.1f} s)", flush=True)

    status = 0
    curate = match = None
    curate_error = None
    if not args.skip_curate:
        missing = curate_available()
        if missing:
            curate_error = f"`openwit curate` is not available:\n{missing}"
            print(curate_error, file=sys.stderr, flush=True)
            status = 2
        else:
            tree = "whole process tree via /proc polling + wait4"
            print(f"openwit curate, {args.repeats} repeat(s) per size; measuring the {tree}",
                  flush=True)
            try:
                curate = bench_curate(args, paths, folder)
            except RuntimeError as err:
                curate_error = f"openwit curate failed: {err}"
                print(curate_error, file=sys.stderr, flush=True)
                status = 2
    if not args.skip_match:
        match = bench_matching(args, paths)
        if match["agreement"] != match["sample"]:
            print(f"DISAGREEMENT: automaton and reference differ on "
                  f"{match['sample'] - match['agreement']} captions, e.g.:", file=sys.stderr)
            for d in match["disagreements"]:
                print(f"  {d}", file=sys.stderr)
            status = 1

    if curate:
        print(f"\n{'candidates':>10} {'wall s':>7} {'cand/s':>8} {'CPU s':>7} {'cand/CPU-s':>10} "
              f"{'peak RSS MiB (tree)':>20} {'max 1 proc MiB':>15}")
        for r in curate:
            print(f"{r['size']:>10,} {r['wall_s']:>7.1f} {r['candidates_per_s']:>8,.0f} "
                  f"{r['cpu_s']:>7.1f} {r['candidates_per_cpu_s']:>10,.0f} "
                  f"{r['peak_rss_tree_bytes'] / 2**20:>20,.0f} "
                  f"{r['maxrss_wait4_bytes'] / 2**20:>15,.0f}")
        if len(curate) > 1:
            ratio = curate[-1]["peak_rss_tree_bytes"] / curate[0]["peak_rss_tree_bytes"]
            print(f"peak RSS ratio {curate[-1]['size']:,} / {curate[0]['size']:,}: {ratio:.2f} "
                  f"(goal <= {GOAL_MEMORY_RATIO}; whole process tree)")
        per_core = curate[-1]["candidates_per_cpu_s"]
        print(f"throughput at {curate[-1]['size']:,}: {per_core:,.0f} candidates per CPU-second "
              f"= {per_core / GOAL_PER_CORE:.2f} x the goal of {GOAL_PER_CORE:,}/s per core")

    results = {"command": command, "date": date, "machine": machine(), "data": folder,
               "args": vars(args), "curate": curate, "curate_error": curate_error,
               "matching": match}
    out = os.path.join(args.data, "bench_curate-results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nresults: {out}\n\n--- for benchmarks/RESULTS.md ---\n")
    print(markdown(args, command, curate, match, date))
    return status


if __name__ == "__main__":
    sys.exit(main())
