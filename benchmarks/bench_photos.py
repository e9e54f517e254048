"""The download stage on photo-like JPEGs: `openwit download` against img2dataset's `download()`.

    .venv/bin/python benchmarks/bench_photos.py [--sizes 5000,20000] [--repeats 3] [--hosts 16]

`photo_web.py` makes 20,000 distinct photo-like JPEGs once (cached) and serves them from
memory in two processes on 127.0.0.1 .. 127.0.0.N (its request rate alone is measured and
printed first). For each size, the first N photos' URLs go, in turn, through:

- img2dataset's `download()` (its CLI): 2 processes x 32 threads, webdataset output, 256 px
  border resize, JPEG quality 95, min side 32, aspect ratio at most 5, timeout 10 s, 2 retries;
- `openwit download` of a folder `openwit curate` made from the same list (trivial curation:
  no query table, any language; not timed), the same settings, openwit's defaults otherwise
  (sha256 dedup on, per-host limit 4), on the DirectRunner in memory and multi_processing
  with 2 workers.

Each run reports the median wall time, images written per second per core, CPU use (all
processes' CPU time / wall / cores), the peak RSS of its process tree and the img2dataset /
openwit ratio. Then `--profile` images are taken through openwit's per-image steps one at a
time on one thread, to show where its time goes, next to img2dataset's full decode and
resize of the same bytes, with the PSNR of openwit's 256 px pixels against a full-size decode
and area-filter resize (image area only, not the white border), and `--side-by-side PNG`
writes a few of them next to each other.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import photo_web  # noqa: E402 (the benchmark's own server, beside this file)

VENV_BIN = os.path.dirname(sys.executable)
CORES = os.cpu_count() or 1
IMAGE_SIZE, QUALITY, MIN_SIDE, MAX_ASPECT, TIMEOUT, RETRIES = 256, 95, 32, 5.0, 10, 2
SAMPLES_PER_SHARD = 1000
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_SILENT": "true"}


# ------------------------------------------------------------------- measuring a process tree


def _tree_rss_bytes(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def measured_run(command: list[str]) -> dict:
    """Runs `command`; its wall time, CPU time of it and all its descendants, peak tree RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=ENV)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_bytes(process.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    wall = time.monotonic() - started
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {process.returncode}:\n"
                           f"{output.decode(errors='replace')[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "peak_rss": peak[0]}


# ------------------------------------------------------------------------------- contenders


def write_list(web, count: int, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "url": [web.url(i) for i in range(count)],
        "caption": [f"a photograph, number {i}, of shapes in a textured scene"
                    for i in range(count)],
    }), path)


def run_img2dataset(candidates: str, output: str) -> dict:
    run = measured_run([
        os.path.join(VENV_BIN, "img2dataset"), "--url_list", candidates,
        "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
        "--output_format", "webdataset", "--output_folder", output,
        "--processes_count", "2", "--thread_count", "32", "--image_size", str(IMAGE_SIZE),
        "--resize_mode", "border", "--encode_quality", str(QUALITY),
        "--min_image_size", str(MIN_SIDE), "--max_aspect_ratio", str(MAX_ASPECT),
        "--timeout", str(TIMEOUT), "--retries", str(RETRIES),
        "--number_sample_per_shard", str(SAMPLES_PER_SHARD), "--enable_wandb", "False",
    ])
    run["written"] = sum(json.load(open(path))["successes"]
                         for path in glob.glob(os.path.join(output, "*_stats.json")))
    return run


def curate(candidates: str, folder: str) -> None:
    subprocess.run([os.path.join(VENV_BIN, "openwit"), "curate", "--candidates", candidates,
                    "--output", folder, "--languages", "any"],
                   check=True, capture_output=True, env=ENV)


def run_openwit(curated: str, output: str, runner: list[str]) -> dict:
    run = measured_run([
        os.path.join(VENV_BIN, "openwit"), "download", "--curated", curated, "--output", output,
        "--allow-network", "127.0.0.0/24", "--image-size", str(IMAGE_SIZE),
        "--resize-mode", "border", "--encode-quality", str(QUALITY),
        "--min-image-size", str(MIN_SIDE), "--max-aspect-ratio", str(MAX_ASPECT),
        "--timeout", str(TIMEOUT), "--retries", str(RETRIES),
        "--download-threads", "32", "--samples-per-shard", str(SAMPLES_PER_SHARD), *runner,
    ])
    with open(os.path.join(output, "stats.json")) as f:
        run["written"] = json.load(f)["written"]
    return run


IMG2DATASET = "img2dataset download(), 2 processes x 32 threads"
CONTENDERS = {
    IMG2DATASET: lambda lists, out: run_img2dataset(lists["candidates"], out),
    "openwit download, DirectRunner in memory": lambda lists, out: run_openwit(
        lists["curated"], out, ["--direct_running_mode", "in_memory"]),
    "openwit download, DirectRunner 2 processes": lambda lists, out: run_openwit(
        lists["curated"], out, ["--direct_running_mode", "multi_processing",
                                "--direct_num_workers", "2"]),
}


# --------------------------------------------------------------------------- the profile


def profile(web, count: int, side_by_side: str | None) -> float:
    """openwit's per-image steps on `count` photos, one thread, and the PSNR of its pixels;
    returns the steps' CPU ms per image."""
    import cv2
    import numpy as np
    import simplejpeg
    from PIL import Image

    from openwit.pipeline.images import resize
    from openwit.pipeline.images.config import DownloadConfig
    from openwit.pipeline.images.download import is_complete, needs_pillow_decode
    from openwit.pipeline.images.image_hash import ImageHasher
    from openwit.pipeline.images.fetch import Fetcher
    from openwit.pipeline.core import storage
    from openwit.pipeline.core.layout import SAMPLE_SCHEMA
    from openwit.pipeline.shards.writer import encode_tar, sample_metadata

    config = DownloadConfig(allowed_networks=("127.0.0.0/24",), timeout=TIMEOUT, retries=0)
    fetcher = Fetcher(config, lambda *args: False)
    clock = time.thread_time
    steps = {name: 0.0 for name in ("fetch", "header checks", "decode (reduced)",
                                     "resize", "encode", "sha256 + pHash", "shard writing")}
    reference = {"full decode (img2dataset)": 0.0, "area resize of it": 0.0}
    psnrs, straight_psnrs, samples, pairs = [], [], [], []
    index = 0
    warm = fetcher.fetch(web.url(next(i for i in range(web.photos)
                                      if photo_web.fate(i)[0] == "ok"))).body
    hasher = ImageHasher()
    hasher.of_pixels(resize.decode_reduced(warm, resize.plan_jpeg(
        *Image.open(io.BytesIO(warm)).size, False, IMAGE_SIZE, "border")))
    while len(samples) < count and index < web.photos:
        if photo_web.fate(index)[0] != "ok":
            index += 1
            continue
        t0 = clock()
        data = fetcher.fetch(web.url(index)).body
        t1 = clock()
        with Image.open(io.BytesIO(data)) as header:
            (width, height), plain = header.size, not needs_pillow_decode(header)
            grey = header.mode == "L"
        assert plain and is_complete("JPEG", data)
        plan = resize.plan_jpeg(width, height, grey, IMAGE_SIZE, "border")
        t2 = clock()
        decoded = resize.decode_reduced(data, plan)
        t3 = clock()
        pixels = resize.fit(decoded, plan, "border", IMAGE_SIZE)
        t4 = clock()
        encoded = resize.encode_jpeg(pixels, QUALITY)
        t5 = clock()
        digest, phash = hashlib.sha256(data).hexdigest(), hasher.of_pixels(decoded)
        t6 = clock()
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        t7 = clock()
        expected = cv2.resize(full, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
        t8 = clock()
        straight = simplejpeg.decode_jpeg(data, colorspace="BGR", min_height=plan.height,
                                          min_width=plan.width, strict=False)
        straight = cv2.resize(straight, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
        straight_psnrs.append(cv2.PSNR(straight, expected))
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            steps[name] += seconds
        reference["full decode (img2dataset)"] += t7 - t6
        reference["area resize of it"] += t8 - t7
        top, left = (IMAGE_SIZE - plan.height) // 2, (IMAGE_SIZE - plan.width) // 2
        ours = pixels[top:top + plan.height, left:left + plan.width]
        psnrs.append(cv2.PSNR(ours, expected))
        if len(pairs) < 3 and plan.width == IMAGE_SIZE:
            pairs.append((expected, ours))
        samples.append({
            "key": f"{index:09d}", "url": web.url(index), "caption": "a photograph",
            "queries": [], "language": "en", "language_prob": 1.0, "jpg": encoded,
            "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "original_width": width, "original_height": height, "original_bytes": len(data),
            "sha256": digest, "phash": phash})
        index += 1
    t0 = clock()
    encode_tar(samples)
    storage.encode_parquet([sample_metadata(s) for s in samples], SAMPLE_SCHEMA)
    steps["shard writing"] = clock() - t0
    n = len(samples)
    print(f"\nopenwit's steps on {n} photos, one thread (CPU ms per image):")
    for name, seconds in steps.items():
        print(f"  {name:<28} {1000 * seconds / n:6.2f}")
    print(f"  {'total':<28} {1000 * sum(steps.values()) / n:6.2f}")
    print("img2dataset's Resizer does instead of decode + resize:")
    for name, seconds in reference.items():
        print(f"  {name:<28} {1000 * seconds / n:6.2f}")
    saved = sum(reference.values()) / (steps["decode (reduced)"] + steps["resize"])
    print(f"  full decode + resize / reduced decode + resize = {saved:.2f}")
    print(f"PSNR of openwit's 256 px pixels against a full decode + area resize: median "
          f"{statistics.median(psnrs):.1f} dB, 5th percentile "
          f"{float(np.percentile(psnrs, 5)):.1f} dB, min {min(psnrs):.1f} dB")
    print(f"  decoded straight to the output size instead (no factor-two margin): median "
          f"{statistics.median(straight_psnrs):.1f} dB, 5th percentile "
          f"{float(np.percentile(straight_psnrs, 5)):.1f} dB, min {min(straight_psnrs):.1f} dB")
    if side_by_side:
        rows = [np.hstack([a, np.full((a.shape[0], 8, 3), 255, np.uint8), b]) for a, b in pairs]
        cv2.imwrite(side_by_side, np.vstack(rows))
        print(f"side by side (left: full decode + area resize, right: openwit): {side_by_side}")
    return 1000 * sum(steps.values()) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000",
                        help="comma-separated URL counts (empty: the profile only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only contenders whose name contains TEXT (repeatable; "
                             "img2dataset, the reference, always runs)")
    parser.add_argument("--profile", type=int, default=500, metavar="N",
                        help="photos taken through openwit's steps one by one (0: none)")
    parser.add_argument("--side-by-side", metavar="PNG", help="write three pairs here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    folder = photo_web.make_photos(max([20000, *sizes]))
    chosen = {name: run for name, run in CONTENDERS.items()
              if name == IMG2DATASET or not args.only or any(t in name for t in args.only)}
    workdir = tempfile.mkdtemp(prefix="openwit-bench-photos-")
    summary = []
    with photo_web.PhotoWeb(folder, hosts=args.hosts) as web:
        rate, volume = photo_web.request_rate(web)
        print(f"server alone: {rate:.0f} responses/s, {volume:.0f} MB/s to a Python client "
              f"(2 processes x 16 threads), {len(web.hosts)} hosts", flush=True)
        try:
            for size in sizes:
                lists = {"candidates": os.path.join(workdir, f"list-{size}.parquet"),
                         "curated": os.path.join(workdir, f"curated-{size}")}
                write_list(web, size, lists["candidates"])
                curate(lists["candidates"], lists["curated"])
                runs: dict[str, list[dict]] = {name: [] for name in chosen}
                for repeat in range(args.repeats):
                    for name, run in chosen.items():
                        output = os.path.join(workdir, f"out-{size}-{repeat}")
                        result = run(lists, output)
                        shutil.rmtree(output, ignore_errors=True)
                        runs[name].append(result)
                        print(f"{size} URLs, repeat {repeat + 1}: {name}: {result['wall']:.1f} s,"
                              f" {result['written']} written", flush=True)
                summary.append((size, runs))
            profiled_ms = profile(web, args.profile, args.side_by_side) if args.profile else 0
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    for size, runs in summary:
        print(f"\n{size} URLs on {args.hosts} hosts, {CORES} cores, median of {args.repeats}:")
        reference = statistics.median(r["wall"] for r in runs[IMG2DATASET])
        for name, results in runs.items():
            wall = statistics.median(r["wall"] for r in results)
            written = statistics.median(r["written"] for r in results)
            cpu = statistics.median(r["cpu"] / r["wall"] / CORES for r in results)
            rss = statistics.median(r["peak_rss"] for r in results) / 2**20
            cpu_ms = statistics.median(1000 * r["cpu"] / r["written"] for r in results)
            overhead = (f"  (steps above {profiled_ms:.1f}: startup, Beam and scheduling "
                        f"{cpu_ms - profiled_ms:.1f})"
                        if profiled_ms and name.startswith("openwit") else "")
            print(f"  {name:<46} {wall:6.1f} s {written:6.0f} written "
                  f"{written / wall / CORES:6.1f} images/s/core  CPU {100 * cpu:3.0f}%  "
                  f"peak RSS {rss:5.0f} MiB  img2dataset/this = {reference / wall:.2f}  "
                  f"{cpu_ms:.1f} CPU ms per image written{overhead}")


if __name__ == "__main__":
    main()
