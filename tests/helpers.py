"""Test helpers: local servers on 127.0.0.1, image bytes, a Beam test pipeline."""

from __future__ import annotations

import dataclasses
import http.server
import io
import os
import struct
import threading
import time
import zlib

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from openwit.pipeline.core.records import StageResult
from openwit.pipeline.images.cap import ExactCap
from openwit.pipeline.text.steps import RunSteps, unbatch
from openwit.pipeline.text.url_dedup import DropDuplicateUrlsStep, FindDuplicateUrls

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


def beam_test_pipeline() -> TestPipeline:
    # Explicit runner: Beam's default would first try to download the Prism binary.
    return TestPipeline(runner="DirectRunner")


def jpeg_bytes(color=(200, 30, 30), size=(320, 240), quality=90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(color=(30, 200, 30, 128), size=(300, 200)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@dataclasses.dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    # Responses served in turn to successive requests; the last one repeats.
    then: list["Route"] = dataclasses.field(default_factory=list)
    delay_before: float = 0.0  # seconds before the status line
    trickle_seconds: float = 0.0  # spread the body over this long


class LocalSite:
    """A tiny web site with exactly the responses a test declares, on 127.0.0.1 (or another
    loopback address: a second host)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.user_agents: list[str] = []
        self.request_times: list[tuple[float, str]] = []  # (time.monotonic(), path)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with site._lock:
                    hit = site.hits.get(self.path, 0)
                    site.hits[self.path] = hit + 1
                    site.user_agents.append(self.headers.get("User-Agent", ""))
                    site.request_times.append((time.monotonic(), self.path))
                    site.in_flight += 1
                    site.peak_in_flight = max(site.peak_in_flight, site.in_flight)
                self._answering = True
                try:
                    self._route(hit)
                finally:
                    self._answered()

            def _answered(self):
                # Counted out just before the client can see the end of the answer: a client
                # may open its next connection before this thread runs again.
                if self._answering:
                    self._answering = False
                    with site._lock:
                        site.in_flight -= 1

            def _route(self, hit):
                route = site.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self._answered()
                    self.end_headers()
                    return
                sequence = [route, *route.then]
                route = sequence[min(hit, len(sequence) - 1)]
                time.sleep(route.delay_before)
                try:
                    self._respond(route)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up first (timeout tests): expected

            def _respond(self, route):
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                if not route.body:
                    self._answered()
                self.end_headers()
                if not route.trickle_seconds:
                    self._answered()
                    self.wfile.write(route.body)
                    return
                pieces = 20
                step = max(1, len(route.body) // pieces)
                for start in range(0, len(route.body), step):
                    if start + step >= len(route.body):
                        self._answered()
                    self.wfile.write(route.body[start:start + step])
                    self.wfile.flush()
                    time.sleep(route.trickle_seconds / pieces)

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base_url + path

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def bomb_png(width=20000, height=20000) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


class StepOnElements(beam.PTransform):
    """Runs one production step (a text stage's `Step`) through the production `RunSteps`
    over single candidates, so a stage can be tested alone: `pcoll | StepOnElements(step)`
    gives a StageResult of single candidates and the stage's failure records."""

    def __init__(self, step, side_inputs: dict | None = None, batch_size: int = 2048):
        super().__init__()
        self._step = step
        self._side_inputs = side_inputs
        self._batch_size = batch_size

    def expand(self, candidates):
        batches = candidates | "Batch" >> beam.BatchElements(
            min_batch_size=1, max_batch_size=self._batch_size)
        result = batches | "Steps" >> RunSteps([self._step], self._side_inputs)
        if self._step.stage is None:
            failed = candidates.pipeline | "No failures" >> beam.Create([])
        else:
            failed = result.failed[self._step.stage]
        return StageResult(unbatch(result.kept), failed)


def find_duplicate_urls(candidates):
    """Single candidates -> FindDuplicateUrls's (loser row, winner key) pairs."""
    return (candidates | "One-candidate batches" >> beam.Map(lambda c: [c])
            | "Find duplicate URLs" >> FindDuplicateUrls())


def dedup_urls(candidates):
    """Single candidates -> StageResult of URL dedup, as curation's passes do it."""
    duplicates = find_duplicate_urls(candidates)
    return candidates | "Drop duplicate URLs" >> StepOnElements(
        DropDuplicateUrlsStep(), {"losers": beam.pvalue.AsDict(duplicates)})


class CapCandidates(beam.PTransform):
    """Single candidates (key, queries, ...) through the production ExactCap ->
    StageResult(kept candidates, failure records)."""

    def __init__(self, config):
        super().__init__()
        self._config = config

    def expand(self, candidates):
        dropped = (
            candidates
            | "As survivors" >> beam.Map(lambda c: {"key": c["key"], "shard": 0,
                                                    "queries": c["queries"], "new": True})
            | "Exact cap" >> ExactCap(self._config)
            | "Records" >> beam.Values()
        )
        kept = candidates | "Not dropped" >> beam.Filter(
            lambda c, dropped_keys: c["key"] not in dropped_keys,
            dropped_keys=beam.pvalue.AsDict(
                dropped | "By key" >> beam.Map(lambda f: (f["key"], f))))
        return StageResult(kept, dropped)


class RawServer:
    """A TCP server on `host` (a loopback address) whose handler writes raw bytes, for
    responses no HTTP library would send: one header byte at a time, endless trailers."""

    def __init__(self, handler, host: str = "127.0.0.1"):
        import socket

        self._handler = handler
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown_host}:{self.port}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import socket

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            conn.recv(65536)  # the request
            self._handler(conn, self._stop)
        except OSError:
            pass  # the client gave up first: expected in timeout tests
        finally:
            conn.close()

    def url(self, path: str = "/x.jpg") -> str:
        return self.base_url + path

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def assert_accounted(output) -> dict:
    """Every candidate read ends as a sample written or as a failure record, by reason:
    stats.json's input rows = samples in the shards (or curated rows) + failure records, and
    its failures by reason are exactly the records' reasons. Returns the counts."""
    import collections
    import glob
    import json

    import pyarrow.parquet as pq

    stats = json.loads((output / "stats.json").read_text())
    records = collections.Counter()
    for path in glob.glob(str(output / "failures" / "*.parquet")):
        records.update(pq.read_table(path, columns=["reason"]).column("reason").to_pylist())
    sizes = output / "shards" / "sizes.json"
    if sizes.exists():
        kept = sum(json.loads(sizes.read_text()).values())
        assert kept == stats["written"], (kept, stats["written"])
    else:
        kept = sum(pq.read_metadata(path).num_rows
                   for path in glob.glob(str(output / "curated.parquet" / "*.parquet")))
        assert kept == stats["curated"], (kept, stats["curated"])
    by_reason = {reason: n for reason, n in stats["failures_by_reason"].items() if n}
    assert dict(records) == by_reason, (dict(records), by_reason)
    assert stats["input_rows"] == kept + sum(records.values()), (
        stats["input_rows"], kept, sum(records.values()))
    assert not stats.get("accounting_problems")
    return {"input_rows": stats["input_rows"], "kept": kept, "failures": dict(records)}


def bucket_objects(client, prefix: str, bucket: str = "corpus") -> dict[str, bytes]:
    """name under `prefix`/ -> bytes, for every object of a (moto) bucket under it."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=prefix + "/"):
        for entry in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            found[entry["Key"].removeprefix(prefix + "/")] = body
    return found
