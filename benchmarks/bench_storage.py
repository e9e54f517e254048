"""Object storage: `openwit build` to s3:// (a local S3 endpoint) against the same build to a
local folder, a shard's upload against a plain boto3 multipart upload, and a rerun of a
completed build.

    .venv/bin/python benchmarks/bench_storage.py [--samples 2000] [--repeats 3]
                                                  [--shard-mb 128]

The mini-web (no slow or trickling responses) and moto's ThreadedMotoServer run on
127.0.0.1, each in its own process. Each repeat runs, in turn:

- `openwit build` (`bench_download.timed_build`, 500 candidates a shard) into a local folder,
  then the same command again (a rerun of a completed
  job);
- the same build into s3://bench/..., then again;
- one shard-sized object (`--shard-mb` of incompressible bytes) written through openwit's
  storage layer (`storage.write_bytes_atomic`: `pipeline/core/s3.py`'s parallel multipart
  upload), and the same bytes through boto3's `upload_fileobj` (multipart, its default
  transfer config).

Prints medians and three ratios: S3 build / local build (the goal is at most 1.15), openwit
upload throughput / boto3's (at least 0.8), and rerun / first run (under 0.10).
"""

from __future__ import annotations

import argparse
import collections
import io
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import time

from bench_download import serve_miniweb, timed_build

SHARD = ["--samples-per-shard", "500"]  # 4 shards of the default 2,000 candidates
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
BUCKET = "bench"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench",
               "region_name": "us-east-1"}


def serve_s3(request_log: str, ready) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    # One line per request (werkzeug's access log), counted by the benchmark per contender.
    access = logging.getLogger("werkzeug")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(logging.FileHandler(request_log))

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    ready.put(f"http://{host}:{port}")
    while True:
        time.sleep(3600)


def s3_flags(endpoint: str) -> list[str]:
    return ["--s3_endpoint_url", endpoint, "--s3_access_key_id", CREDENTIALS["aws_access_key_id"],
            "--s3_secret_access_key", CREDENTIALS["aws_secret_access_key"],
            "--s3_region_name", CREDENTIALS["region_name"]]


def requests_since(request_log: str, offset: int) -> tuple[collections.Counter, int]:
    """S3 requests logged after `offset` bytes of the log, by method; and the new offset."""
    time.sleep(0.2)  # the server flushes its log line after answering
    with open(request_log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", errors="replace").splitlines()
        end = f.tell()
    methods = collections.Counter()
    for line in lines:
        line = ANSI_ESCAPE.sub("", line)  # werkzeug colours the lines of errors
        if line.count('"') >= 2:
            _, request, status = line.split('"', 2)
            methods[f"{request.split(' ')[0]} {status.split()[0] if status.split() else '?'}"] += 1
    return methods, end


def upload_through_openwit(endpoint: str, key: str, data: bytes) -> float:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from openwit.pipeline.core import storage

    FileSystems.set_options(PipelineOptions(s3_flags(endpoint)))
    started = time.monotonic()
    storage.write_bytes_atomic(f"s3://{BUCKET}/{key}", data)
    return time.monotonic() - started


def upload_through_boto3(client, key: str, data: bytes) -> float:
    started = time.monotonic()
    client.upload_fileobj(io.BytesIO(data), BUCKET, key)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-mb", type=int, default=128)
    args = parser.parse_args()

    import boto3

    workdir = tempfile.mkdtemp(prefix="openwit-bench-storage-")
    web_ready, s3_ready = multiprocessing.Queue(), multiprocessing.Queue()
    web = multiprocessing.Process(target=serve_miniweb, daemon=True, args=(
        args.samples, 1, False, os.path.join(workdir, "web"), web_ready))
    request_log = os.path.join(workdir, "s3-requests.log")
    s3 = multiprocessing.Process(target=serve_s3, args=(request_log, s3_ready), daemon=True)
    web.start()
    s3.start()
    candidates = web_ready.get(timeout=120)
    endpoint = s3_ready.get(timeout=60)
    client = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    data = os.urandom(args.shard_mb * 1024 * 1024)
    _, log_offset = requests_since(request_log, 0)
    requests: dict[str, collections.Counter] = {}

    times: dict[str, list[float]] = {name: [] for name in (
        "build to a local folder", "rerun, local", "build to s3://", "rerun, s3://",
        "shard upload, openwit storage", "shard upload, boto3 upload_fileobj")}
    try:
        for repeat in range(args.repeats):
            local = os.path.join(workdir, f"local-{repeat}")
            remote = f"s3://{BUCKET}/out-{repeat}"
            to_s3 = [*SHARD, *s3_flags(endpoint)]
            runs = [
                ("build to a local folder", lambda: timed_build(candidates, local, SHARD)),
                ("rerun, local", lambda: timed_build(candidates, local, SHARD)),
                ("build to s3://", lambda: timed_build(candidates, remote, to_s3)),
                ("rerun, s3://", lambda: timed_build(candidates, remote, to_s3)),
                ("shard upload, openwit storage", lambda: upload_through_openwit(
                    endpoint, f"upload-{repeat}/a.tar", data)),
                ("shard upload, boto3 upload_fileobj", lambda: upload_through_boto3(
                    client, f"upload-{repeat}/b.tar", data)),
            ]
            for name, run in runs:
                seconds = run()
                times[name].append(seconds)
                requests[name], log_offset = requests_since(request_log, log_offset)
                print(f"repeat {repeat + 1}: {name}: {seconds:.1f} s, S3 requests "
                      f"{dict(requests[name].most_common())}", flush=True)
            shutil.rmtree(local, ignore_errors=True)
    finally:
        web.terminate()
        s3.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{args.samples} candidates, {args.shard_mb} MB shard upload, median of "
          f"{args.repeats}:")
    for name, seconds in median.items():
        counted = requests.get(name, collections.Counter())
        total = sum(counted.values())
        print(f"  {name:<36} {seconds:7.2f} s  S3 requests (last repeat) {total}"
              + (f" {dict(counted.most_common())}" if total else ""))
    to_s3 = median["build to s3://"] / median["build to a local folder"]
    upload = median["shard upload, boto3 upload_fileobj"] / median["shard upload, openwit storage"]
    rerun_local = median["rerun, local"] / median["build to a local folder"]
    rerun_s3 = median["rerun, s3://"] / median["build to s3://"]
    print(f"  s3:// build / local build = {to_s3:.2f}  (goal <= 1.15)")
    print(f"  openwit upload throughput / boto3's = {upload:.2f}  (goal >= 0.8)")
    print(f"  rerun / first run: local {rerun_local:.2f}, s3:// {rerun_s3:.2f}  (goal < 0.10)")


if __name__ == "__main__":
    main()
