"""The mini-web's HTTP server and the :class:`MiniWeb` context manager.

The server answers GET for the routes of a generated :class:`World`, rendering
images lazily and misbehaving on purpose according to each route's kind.  It
only ever serves and redirects to itself, on the address it was bound to.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Hashable, Mapping
from urllib.parse import urlsplit

from .render import SHAPES, bomb_png, render_item
from .world import (
    KINDS,
    ROBOTS_DISALLOWED_FOLDER,
    Route,
    World,
    WorldConfig,
    WorldFiles,
    generate_world,
    write_world,
)

# How often slow responses check whether the client left or the server stops.
_POLL_SECONDS = 0.1
# Trickled bodies are sent in this many pieces, whatever slow_seconds is.
_TRICKLE_STEPS = 200
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
ROBOTS_TXT_PATH = "/robots.txt"


def robots_txt() -> bytes:
    """Every host's robots.txt: another crawler may take nothing; ours (matched by the `*`
    group, the most specific one that names it) keeps out of the disallowed folder, also
    when a query string follows (the `*` wildcard)."""
    return (
        "# the mini-web\n"
        "User-agent: otherbot\n"
        "Disallow: /\n"
        "\n"
        "User-agent: *\n"
        f"Disallow: {ROBOTS_DISALLOWED_FOLDER}\n"
        "Disallow: /*?nocrawl\n"
    ).encode()


class _LruCache:
    """A small thread-safe LRU cache of response bodies.

    A value may occasionally be built twice when two threads miss at once;
    rendering is deterministic, so that only costs time.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return value


class MiniWebServer(ThreadingHTTPServer):
    """Threaded HTTP server for one world's routes."""

    daemon_threads = True
    # Slow responses can run for slow_seconds; shutdown must not wait for them
    # (they also watch ``stopping`` and end within _POLL_SECONDS).
    block_on_close = False
    # 32+ crawler threads connect at once; the default backlog of 5 would
    # turn that burst into connection errors.
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: WorldConfig) -> None:
        self.config = config
        self.routes: Mapping[str, Route] = MappingProxyType({})
        self.stopping = threading.Event()
        self.bodies = _LruCache(capacity=256)
        self._hits: Counter[str] = Counter()
        self._hits_lock = threading.Lock()
        self.in_flight = 0
        self.requests_started = 0
        self.peak_in_flight = 0  # the most requests this server was answering at once
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup
        # that can stall for seconds on machines without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def count_hit(self, path: str) -> int:
        """1 for the first request of ``path``, 2 for the second, ..."""
        with self._hits_lock:
            self._hits[path] += 1
            return self._hits[path]

    def hits(self, path: str) -> int:
        with self._hits_lock:
            return self._hits[path]


    def started(self) -> None:
        with self._hits_lock:
            self.in_flight += 1
            self.requests_started += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def finished(self) -> None:
        with self._hits_lock:
            self.in_flight -= 1

    def handle_error(self, request, client_address) -> None:
        # Crawlers hang up mid-response all the time (timeouts, size limits);
        # that is expected traffic, not a server error worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: MiniWebServer
    protocol_version = "HTTP/1.0"  # one request per connection keeps the pathologies simple
    server_version = "miniweb/1.0"
    sys_version = ""
    # Socket timeout: drops clients that connect and never send a request.
    timeout = 60.0

    def log_message(self, format: str, *args: object) -> None:
        # A log line per request would cost more than serving the image.
        pass

    # True from the moment a request is read until its answer is all but sent.
    _answering = False

    def do_GET(self) -> None:
        self._answering = True
        self.server.started()
        try:
            self._answer(urlsplit(self.path).path)
        finally:
            self._answered()

    def _answered(self) -> None:
        """The request stops counting as in flight just before the client can see its end:
        a client that opens its next connection the moment it has read the last byte is
        polite, and may do so before this thread runs again."""
        if self._answering:
            self._answering = False
            self.server.finished()

    def _answer(self, path: str) -> None:
        if path == ROBOTS_TXT_PATH:
            self.server.count_hit(path)
            self._send(200, "text/plain", robots_txt())
            return
        route = self.server.routes.get(path)
        if route is None:
            self._send(404, "text/plain", b"not found\n")
            return
        _RESPONDERS[route.kind](self, path, route)

    # ---- building blocks

    def _send(
        self, status: int, content_type: str, body: bytes, headers: Mapping[str, str] = _NO_HEADERS
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if not body:
            self._answered()
        self.end_headers()
        self._answered()
        self.wfile.write(body)

    def _image(self, route: Route) -> bytes:
        assert route.spec is not None
        return self.server.bodies.get_or_make(route.spec, lambda: render_item(route.spec))

    def _send_image(self, route: Route, headers: Mapping[str, str] = _NO_HEADERS) -> None:
        assert route.spec is not None
        self._send(200, route.spec.content_type, self._image(route), headers)

    def _wait_for_client(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the client hangs up or the server stops."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ)
            while not self.server.stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                if selector.select(min(remaining, _POLL_SECONDS)):
                    # The request is already read, so readable means EOF, a
                    # reset, or junk we may discard.
                    try:
                        if not self.connection.recv(4096):
                            return False
                    except OSError:
                        return False
        return False

    # ---- one responder per kind

    def _serve_image(self, path: str, route: Route) -> None:
        self._send_image(route)

    def _serve_status(self, path: str, route: Route) -> None:
        status = 500 if route.kind == "http_500" else 404
        self._send(status, "text/plain", f"{status}\n".encode())

    def _serve_throttled(self, path: str, route: Route) -> None:
        if self.server.count_hit(path) % 2 == 1:
            self._send(429, "text/plain", b"slow down\n", {"Retry-After": "1"})
        else:
            self._send_image(route)

    def _serve_slow_headers(self, path: str, route: Route) -> None:
        if self._wait_for_client(self.server.config.slow_seconds):
            self._send_image(route)

    def _serve_trickle(self, path: str, route: Route) -> None:
        assert route.spec is not None
        body = self._image(route)
        self.send_response(200)
        self.send_header("Content-Type", route.spec.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        pause = self.server.config.slow_seconds / _TRICKLE_STEPS
        piece = -(-len(body) // _TRICKLE_STEPS)
        try:
            for start in range(0, len(body), piece):
                if start + piece >= len(body):
                    self._answered()
                self.wfile.write(body[start : start + piece])
                if self.server.stopping.wait(pause):
                    return
        except (ConnectionError, TimeoutError):
            return  # the client gave up; nothing left to do

    def _serve_redirect(self, path: str, route: Route) -> None:
        assert route.location is not None
        self._send(302, "text/plain", b"moved\n", {"Location": route.location})

    def _serve_reset(self, path: str, route: Route) -> None:
        # Linger 0 makes close() send RST instead of FIN.  The buffered reader
        # holds a reference that would otherwise keep the socket open.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self._answered()
        self.connection.close()
        self.close_connection = True

    def _serve_not_image(self, path: str, route: Route) -> None:
        self._send(200, "image/jpeg", _SOFT_404_PAGE)

    def _serve_truncated(self, path: str, route: Route) -> None:
        assert route.truncate_at is not None
        body = self._image(route)
        self._send(200, "image/jpeg", body[: int(len(body) * route.truncate_at)])

    def _serve_bomb(self, path: str, route: Route) -> None:
        assert route.spec is not None
        seed = route.spec.seed
        body = self.server.bodies.get_or_make(("bomb", seed), lambda: bomb_png(seed))
        self._send(200, "image/png", body)

    def _serve_noai(self, path: str, route: Route) -> None:
        self._send_image(route, {"X-Robots-Tag": "noai"})

    def _serve_noai_bot(self, path: str, route: Route) -> None:
        self._send_image(route, {"X-Robots-Tag": f"{self.server.config.user_agent_token}: noimageai"})

    def _serve_other_bot_noai(self, path: str, route: Route) -> None:
        self._send_image(route, {"X-Robots-Tag": "otherbot: noai"})


# An HTML "soft 404" of the kind CDNs return with an image content type.
_SOFT_404_PAGE = (
    b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Image unavailable</title></head>\n"
    b"<body><h1>Sorry, this image is no longer available</h1>\n"
    b"<p>It may have been removed by its owner. <a href=\"/\">Back to the gallery</a></p>\n"
    b"</body></html>\n"
)

_Responder = Callable[[_Handler, str, Route], None]
# Kinds without an entry (dup_url, malformed_url, missing_url) never own a
# route: their URL is another row's, or not fetchable at all.
_RESPONDERS: Mapping[str, _Responder] = MappingProxyType(
    {
        "ok": _Handler._serve_image,
        "exact_dup": _Handler._serve_image,
        "near_dup": _Handler._serve_image,
        "tiny": _Handler._serve_image,
        "http_404": _Handler._serve_status,
        "http_500": _Handler._serve_status,
        "throttled": _Handler._serve_throttled,
        "slow_headers": _Handler._serve_slow_headers,
        "trickle": _Handler._serve_trickle,
        "redirect": _Handler._serve_redirect,
        "redirect_loop": _Handler._serve_redirect,
        "reset": _Handler._serve_reset,
        "not_image": _Handler._serve_not_image,
        "truncated": _Handler._serve_truncated,
        "bomb": _Handler._serve_bomb,
        "noai": _Handler._serve_noai,
        "noai_bot": _Handler._serve_noai_bot,
        "other_bot_noai": _Handler._serve_other_bot_noai,
        "robots_disallowed": _Handler._serve_image,  # robots.txt is the crawler's to read
    }
)
assert set(_RESPONDERS) <= set(KINDS)


class MiniWeb:
    """Generate a world into ``out_dir`` and serve it on 127.0.0.1 (and, with
    ``config.hosts`` > 1, on the next loopback addresses too, one server each).

    Use as a context manager; the servers run in daemon threads between
    ``__enter__`` and ``__exit__``.
    """

    def __init__(self, config: WorldConfig, out_dir: str | os.PathLike) -> None:
        self.config = config
        files = WorldFiles(Path(out_dir))
        self.out_dir = files.out_dir
        self.candidates_path = files.candidates_path
        self.ground_truth_path = files.ground_truth_path
        self.queries_path = files.queries_path
        self.eval_dir = files.eval_dir
        self.world_json_path = files.world_json_path
        self._world: World | None = None
        self._servers: list[MiniWebServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def base_url(self) -> str:
        return self.world.base_url

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("MiniWeb is not running; use it as a context manager")
        return self._world

    def __enter__(self) -> "MiniWeb":
        if self._servers:
            raise RuntimeError("MiniWeb is already running")
        # Bind first: the URLs written into the candidates need the real ports.
        first = ipaddress.ip_address(self.config.host)
        servers: list[MiniWebServer] = []
        try:
            for offset in range(self.config.hosts):
                port = self.config.port if offset == 0 else 0
                servers.append(MiniWebServer((str(first + offset), port), self.config))
            world = generate_world(self.config, [
                f"http://{server.server_address[0]}:{server.server_address[1]}"
                for server in servers])
            write_world(world, self.out_dir)
        except BaseException:
            for server in servers:
                server.server_close()
            raise
        self._world = world
        self._servers = servers
        for server in servers:
            server.routes = world.routes
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_SECONDS},
                name=f"miniweb-{server.server_address[0]}:{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (idempotent).  Slow responses in flight end within
        _POLL_SECONDS; they are not waited for."""
        for server in self._servers:
            server.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers = []
        self._threads = []

    def peak_requests_in_flight(self) -> dict[str, int]:
        """Per host (base URL): the most requests it was answering at once."""
        return {base: server.peak_in_flight
                for base, server in zip(self.world.base_urls, self._servers)}

    def requests_seen(self) -> int:
        """Requests of every path on every host so far (a test's clock for "mid-crawl")."""
        return sum(server.requests_started for server in self._servers)

    def robots_txt_requests(self) -> dict[str, int]:
        """Per host (base URL): how often its robots.txt was asked for."""
        return {base: server.hits(ROBOTS_TXT_PATH)
                for base, server in zip(self.world.base_urls, self._servers)}

    def serve_forever(self) -> None:
        """Block until KeyboardInterrupt (for a CLI inside ``with MiniWeb(...)``)."""
        if not self._threads:
            raise RuntimeError("MiniWeb is not running; use it as a context manager")
        try:
            while all(thread.is_alive() for thread in self._threads):
                self._threads[0].join(timeout=0.5)
        except KeyboardInterrupt:
            return


def describe(web: MiniWeb) -> str:
    """A short human summary of a running mini-web, for a CLI to print."""
    counts = web.world.counts()
    kinds = ", ".join(f"{kind} {count}" for kind, count in counts["kind"].items() if count)
    languages = ", ".join(f"{language} {count}" for language, count in counts["language"].items())
    return "\n".join(
        [
            f"mini-web serving {len(web.world.rows)} candidates at {web.base_url}"
            + (f" and {len(web.world.base_urls) - 1} more hosts" if len(web.world.base_urls) > 1
               else ""),
            f"  candidates:   {web.candidates_path}",
            f"  ground truth: {web.ground_truth_path}",
            f"  queries:      {web.queries_path}",
            f"  eval set:     {web.eval_dir} "
            f"({web.config.eval_images_per_class} images x {len(SHAPES)} classes)",
            f"  world:        {web.world_json_path}",
            f"  kinds:        {kinds}",
            f"  languages:    {languages}",
        ]
    )
