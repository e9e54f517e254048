"""One deadline per response, from name resolution to the last byte: hostile servers the
test starts on 127.0.0.1, each cut off at --timeout, never after a per-read timeout per byte."""

from __future__ import annotations

import socket
import time

import pytest

from helpers import RawServer, jpeg_bytes
from openwit.pipeline.core.records import Reason
from openwit.pipeline.images import download
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.download import load_img2dataset
from openwit.pipeline.images.fetch import Fetcher

TIMEOUT = 1.5
SLACK = 1.0  # scheduling on a busy 2-core machine


def fetcher(getaddrinfo=socket.getaddrinfo, **overrides) -> Fetcher:
    downloader, _ = load_img2dataset()
    settings = {"allow_private_hosts": True, "timeout": TIMEOUT, "retries": 0, **overrides}
    return Fetcher(DownloadConfig(**settings), downloader.is_disallowed, getaddrinfo=getaddrinfo)


def trickle(data: bytes, every: float):
    def handler(conn, stop):
        for byte in data:
            if stop.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(every)
    return handler


def timed_fetch(server_handler, **overrides):
    server = RawServer(server_handler)
    client = fetcher(**overrides)  # before the clock: img2dataset's first import is slow
    try:
        started = time.monotonic()
        result = client.fetch(server.url())
        return result, time.monotonic() - started
    finally:
        server.close()


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n"


@pytest.mark.parametrize("name, handler", [
    ("status line one byte at a time", trickle(HEADERS + b"x" * 10, 0.3)),
    ("headers one byte at a time", lambda conn, stop: (
        conn.sendall(b"HTTP/1.1 200 OK\r\n"), trickle(b"X-Slow: " + b"a" * 100, 0.2)(conn, stop))),
    ("endless header lines", lambda conn, stop: (
        conn.sendall(b"HTTP/1.1 200 OK\r\n"),
        [conn.sendall(b"X-More: y\r\n") or time.sleep(0.05) for _ in range(80)
         if not stop.is_set()])),
])
def test_a_slow_response_ends_at_the_deadline(name, handler):
    result, seconds = timed_fetch(handler)
    assert result.body is None
    assert result.reason in (Reason.TIMEOUT, Reason.CONNECTION_ERROR), result
    assert seconds < TIMEOUT + SLACK, (name, seconds)


def test_a_flood_of_trailers_after_the_body_is_a_timeout_not_a_success():
    body = jpeg_bytes()

    def handler(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n")
        deadline = time.monotonic() + 3 * TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            conn.sendall(b"X-Trailer: flood\r\n")
            time.sleep(0.02)

    result, seconds = timed_fetch(handler)
    assert result.body is None and result.reason == Reason.TIMEOUT, result
    assert seconds < TIMEOUT + SLACK


def test_a_prompt_chunked_response_with_trailers_still_succeeds():
    body = jpeg_bytes()

    def handler(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\nX-Checksum: 1\r\n\r\n")

    result, _ = timed_fetch(handler)
    assert result.body == body


def test_name_resolution_is_inside_the_deadline():
    def slow_resolver(host, port, **kwargs):
        time.sleep(4 * TIMEOUT)
        return socket.getaddrinfo("127.0.0.1", port, **kwargs)

    client = fetcher(getaddrinfo=slow_resolver)
    started = time.monotonic()
    result = client.fetch("http://images.example.test/x.jpg")
    assert result.reason == Reason.TIMEOUT and "resolving" in result.detail
    assert time.monotonic() - started < TIMEOUT + SLACK


def test_a_bundle_waits_a_bounded_time_for_its_fetches(monkeypatch):
    """A fetch that never returns (whatever the cause) becomes a timeout failure when its
    bundle ends, instead of holding the bundle and the job."""
    monkeypatch.setattr(download, "FINISH_SLACK_SECONDS", 0.5)
    monkeypatch.setattr(Fetcher, "fetch", lambda self, url: time.sleep(30))
    fn = download.DownloadFn(DownloadConfig(timeout=0.2, retries=0, max_retry_wait=0.0,
                                            threads=2, allow_private_hosts=True))
    fn.setup()
    fn.start_bundle()
    started = time.monotonic()
    assert list(fn.process((0, {"key": "k", "url": "http://a.test/x.jpg", "caption": "c"}))) == []
    outputs = list(fn.finish_bundle())
    assert time.monotonic() - started < 0.2 * 2 + 0.5 + SLACK
    ((shard, record),) = [o.value.value if hasattr(o.value, "value") else o.value
                          for o in outputs]
    assert shard == 0 and record["reason"] == Reason.TIMEOUT
    fn.teardown()
