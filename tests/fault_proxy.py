"""A fault-injecting HTTP reverse proxy for tests, put on 127.0.0.1 in front of a local S3 server.

Why: moto answers every request at once and never fails, so code that writes to S3 is only ever
tested on a perfect network. Real S3 throttles (503 SlowDown), drops connections, and is slow
now and then; the retry and resume paths of our writers only run when that happens. This proxy
makes it happen on purpose, reproducibly, and also lets a test stop one chosen request in
flight (`FaultProxy.hold_when`) so that a client process can be killed mid-upload.

Usage::

    with FaultProxy(moto_endpoint, FaultPlan(seed=1, slow_down=0.2)) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, ...)

Only the standard library is used, so the proxy itself has no retry logic, connection pool or
header rewriting of its own that could hide what the client did.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import random
import socket
import struct
import threading
import time
import uuid
from typing import Callable, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

# (method, path, query) -> bool; path without the query string, query as sent (not decoded).
RequestPredicate = Callable[[str, str, str], bool]

# The faults that fail a request (the client must retry), as opposed to the ones that only slow
# it down. Only the failing ones count towards `FaultPlan.max_faults_in_a_row`.
FAILING_FAULTS = ("slow_down", "reset", "reset_mid_upload", "reset_after_forward")

# Headers about one connection rather than the message (RFC 9110, section 7.6.1). They are not
# forwarded, except Transfer-Encoding on a chunked request body, whose framing is forwarded as is.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})

_SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
)


def only_uploads(method: str, path: str, query: str) -> bool:
    """A `FaultPlan.only` that faults only requests that carry data (PUT and POST), so that a
    test can make writes flaky while its own reads and listings stay reliable."""
    return method in ("PUT", "POST")


def path_contains(fragment: str) -> RequestPredicate:
    """A `FaultPlan.only` that faults only the paths containing `fragment` (say "/shards/"),
    to aim the faults at one kind of object and leave markers and manifests alone."""
    def predicate(method: str, path: str, query: str) -> bool:
        return fragment in path
    predicate.__name__ = f"path_contains({fragment!r})"
    return predicate


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """What the proxy does to each request, as a probability per kind of fault.

    The schedule is seeded: each request gets its own `random.Random`, seeded from `seed`, the
    request's identity (method, path and query, less S3's `uploadId`, which the server mints at
    random) and how many requests with that identity came before it. So the same seed and the
    same requests give the same faults, also when a client sends them from several threads in
    an order that changes from run to run, as boto3's transfer manager does with parts.

    `reset_after_forward` is the one failing fault that does reach the upstream: the request is
    applied there, then the client's connection is reset instead of given the answer, as when a
    response is lost on the way back. It is what shows whether a retried request is safe to
    repeat (a second CompleteMultipartUpload, say); the other faults never touch the upstream.

    At most one failing fault is drawn per request: `slow_down`, `reset`, `reset_mid_upload` and
    `reset_after_forward` share one draw, so their sum must not exceed 1. `reset_mid_upload`
    applies only to PUT and POST requests with a body; elsewhere its share of the draw lets the
    request through. `delay` (a pause of `delay_seconds` before forwarding) and `trickle` (the
    response body sent in pieces spread over `trickle_seconds`) are drawn on their own, apply
    only to requests that are forwarded, and never fail anything, unless the client's own read
    timeout is shorter than the slowness.

    `only`, when given, limits all faults to the requests it accepts; the others always pass.

    The cap, `max_faults_in_a_row`: once the same request identity has been failed that many
    times in a row, its next attempt is let through untouched, and the count starts again after
    it. A retry of a request has the same identity as the request, so a client that allows
    `max_faults_in_a_row + 1` attempts per request always gets through, whatever the seed and
    probabilities. boto3's defaults make 3 attempts in "standard" mode and 5 in "legacy"; note
    that `Config(retries={"max_attempts": n})` counts retries, so it makes n + 1 attempts,
    while `total_max_attempts` (and AWS_MAX_ATTEMPTS) count the attempts themselves.
    Identities are finer than (method, path): the parts of one multipart upload differ in their
    `partNumber`, so each part has a cap of its own even when parts are sent concurrently. None
    means no cap, for tests that want to see a client give up.
    """

    seed: int
    slow_down: float = 0.0
    reset: float = 0.0
    reset_mid_upload: float = 0.0
    reset_after_forward: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.2
    trickle: float = 0.0
    trickle_seconds: float = 0.2
    only: RequestPredicate | None = None
    max_faults_in_a_row: int | None = 2

    def __post_init__(self):
        for name in (*FAILING_FAULTS, "delay", "trickle"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultPlan.{name} is a probability, got {value!r}")
        if sum(getattr(self, name) for name in FAILING_FAULTS) > 1.0 + 1e-9:
            raise ValueError("FaultPlan: the failing faults' probabilities add up to more than 1")
        if self.delay_seconds < 0 or self.trickle_seconds < 0:
            raise ValueError("FaultPlan: delay_seconds and trickle_seconds must be >= 0")
        if self.max_faults_in_a_row is not None and self.max_faults_in_a_row < 0:
            raise ValueError("FaultPlan.max_faults_in_a_row must be >= 0 or None")


class Logged(NamedTuple):
    """One request as the proxy saw it. `outcome` is the HTTP status the client got, or the
    name of the failing fault that stopped it (one of FAILING_FAULTS), or "dropped" for a held
    or delayed request whose connection was dropped when the proxy stopped, or "client_gone"
    when the client left while sending its body; it is a plain tuple, so tests can compare it
    with (method, path, outcome)."""

    method: str
    path: str
    outcome: int | str


class Hold:
    """The first request that matches a predicate, stopped at the proxy.

    Event-like (`is_set`, `wait`), so that a test can wait for the moment its client is inside
    the request, do its damage (kill the client, say), and then `release()` the request, which
    is then forwarded without faults, or leave it held, in which case stopping the proxy drops
    its connection. A hold that is released before its request arrives lets it straight through.
    """

    def __init__(self, predicate: RequestPredicate):
        self.predicate = predicate
        self.request: tuple[str, str, str] | None = None  # (method, path, query) once it arrived
        self._arrived = threading.Event()
        self._released = threading.Event()
        self._finished = threading.Event()  # its handler is done with it, either way
        self._claimed = False

    def is_set(self) -> bool:
        return self._arrived.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._arrived.wait(timeout)

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()


class FaultProxy:
    """A reverse proxy on 127.0.0.1 that forwards to `upstream_url` and injects the faults of
    `plan`. It starts serving when constructed; `close()` (or leaving the `with` block) stops it
    without waiting on any client: held requests and idle keep-alive connections are dropped.

    `faults` counts the faults injected, by kind; `requests` lists every request with its
    outcome (see `Logged`), in the order the client was given the outcomes, so a retry always
    comes after the fault that caused it; `request_headers` keeps the headers as they arrived,
    to show what a client really sent; `connections` counts the client connections accepted,
    which shows whether keep-alive works. All of them are copies, taken under a lock.
    """

    def __init__(self, upstream_url: str, plan: FaultPlan | None = None, *,
                 upstream_timeout: float = 60.0, client_timeout: float = 60.0):
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"FaultProxy forwards to an http:// URL, got {upstream_url!r}")
        self.upstream_host = upstream.hostname
        self.upstream_port = upstream.port or 80
        self.plan = plan if plan is not None else FaultPlan(seed=0)
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: collections.Counter[str] = collections.Counter()
        self._requests: list[Logged] = []
        self._request_headers: list[tuple[str, str, list[tuple[str, str]]]] = []
        self._attempts: collections.Counter[tuple] = collections.Counter()
        self._in_a_row: collections.Counter[tuple] = collections.Counter()
        self._holds: list[Hold] = []
        self._connections: set[socket.socket] = set()
        self._connections_accepted = 0

        handler = type("Handler", (_Handler,), {"timeout": client_timeout})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"FaultProxy:{self.port}", daemon=True)
        self._thread.start()

    # The public side.

    @property
    def faults(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._faults)

    @property
    def requests(self) -> list[Logged]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections_accepted

    @property
    def request_headers(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        with self._lock:
            return [(m, p, list(h)) for m, p, h in self._request_headers]

    def hold_when(self, predicate: RequestPredicate) -> Hold:
        """Hold the first request for which `predicate(method, path, query)` is true; see `Hold`.
        Holds are checked before the fault plan, so a held request is never also faulted."""
        hold = Hold(predicate)
        with self._lock:
            self._holds.append(hold)
        return hold

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()  # held and delayed requests notice this and drop their connections
        with self._lock:
            held = [hold for hold in self._holds if hold._claimed]
        for hold in held:  # so that `requests` says "dropped" by the time close() returns
            hold._finished.wait(1)
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wakes the handler threads blocked reading an idle connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2)

    stop = close

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # The handlers' side.

    def _log(self, method: str, path: str, outcome: int | str, fault: str | None = None) -> None:
        with self._lock:
            self._requests.append(Logged(method, path, outcome))
            if fault is not None:
                self._faults[fault] += 1

    def _count_fault(self, fault: str) -> None:
        with self._lock:
            self._faults[fault] += 1

    def _claim_hold(self, method: str, path: str, query: str) -> Hold | None:
        with self._lock:
            holds = [hold for hold in self._holds if not hold._claimed]
        for hold in holds:  # the predicates run unlocked: they may look at the proxy themselves
            if hold.predicate(method, path, query):
                with self._lock:
                    if not hold._claimed:  # another request may have matched it meanwhile
                        hold._claimed = True
                        hold.request = (method, path, query)
                        return hold
        return None

    def _decide(self, method: str, path: str, query: str,
                has_body: bool) -> tuple[str | None, bool, bool]:
        """(failing fault or None, delay?, trickle?) for one request; see FaultPlan."""
        plan = self.plan
        if plan.only is not None and not plan.only(method, path, query):
            return None, False, False
        identity = (method, path, _stable_query(query))
        with self._lock:
            attempt = self._attempts[identity]
            self._attempts[identity] += 1
            rng = random.Random(f"{plan.seed}\0{method}\0{path}\0{identity[2]}\0{attempt}")
            draw, delay_draw, trickle_draw = rng.random(), rng.random(), rng.random()
            failing, edge = None, 0.0
            for name in FAILING_FAULTS:
                edge += getattr(plan, name)
                if draw < edge:
                    failing = name
                    break
            if failing == "reset_mid_upload" and not (method in ("PUT", "POST") and has_body):
                failing = None
            cap = plan.max_faults_in_a_row
            if failing is not None and cap is not None and self._in_a_row[identity] >= cap:
                failing = None
            self._in_a_row[identity] = self._in_a_row[identity] + 1 if failing else 0
        return failing, delay_draw < plan.delay, trickle_draw < plan.trickle


def _stable_query(query: str) -> str:
    """The query less `uploadId`: upload IDs are minted at random by the server, so a schedule
    keyed on them would differ between two runs of the same requests."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k != "uploadId"])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # never wait for a handler thread: a held request may never end
    request_queue_size = 64  # boto3's transfer manager opens several connections at once
    proxy: FaultProxy

    def handle_error(self, request, client_address):
        pass  # a client that went away is what these tests are about, not something to print


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects of S3
    server: _Server

    def log_message(self, format, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._connections.add(self.connection)
            self.server.proxy._connections_accepted += 1

    def finish(self):
        with self.server.proxy._lock:
            self.server.proxy._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _handle(self):
        proxy = self.server.proxy
        method = self.command
        split = urlsplit(self.path)
        path, query = split.path, split.query
        with proxy._lock:
            proxy._request_headers.append((method, path, list(self.headers.items())))

        # Each outcome is logged before the client can see it, so that `requests` is in the
        # order the client experienced: a retry on a fresh connection cannot be logged ahead of
        # the fault that caused it.
        hold = proxy._claim_hold(method, path, query)
        if hold is not None:
            try:
                hold._arrived.set()
                while not hold._released.wait(0.02):
                    if proxy._stopping.is_set():
                        proxy._log(method, path, "dropped")
                        self._reset()
                        return
                self._forward(method, path)
            finally:
                hold._finished.set()
            return

        failing, delay, trickle = proxy._decide(method, path, query, self._has_body())
        if failing == "slow_down":
            try:
                self._read_body()  # so that the connection stays usable for the next request
            except OSError:  # ConnectionError included
                proxy._log(method, path, "client_gone")
                self.close_connection = True
                return
            proxy._log(method, path, "slow_down", fault="slow_down")
            self._answer_slow_down(method)
        elif failing == "reset":
            proxy._log(method, path, "reset", fault="reset")
            self._reset()
        elif failing == "reset_mid_upload":
            self._read_half_body()
            proxy._log(method, path, "reset_mid_upload", fault="reset_mid_upload")
            self._reset()
        elif failing == "reset_after_forward":
            self._forward(method, path, lose_response=True)
        else:
            if delay:
                proxy._count_fault("delay")
                if proxy._stopping.wait(proxy.plan.delay_seconds):
                    proxy._log(method, path, "dropped")
                    self._reset()
                    return
            if trickle:
                proxy._count_fault("trickle")
            self._forward(method, path, trickle=trickle)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _handle

    # Request bodies.

    def _is_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _has_body(self) -> bool:
        return self._is_chunked() or int(self.headers.get("Content-Length") or 0) > 0

    def _read_exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("the client closed the connection inside the request body")
        return data

    def _read_line(self) -> bytes:
        line = self.rfile.readline(65537)
        if not line.endswith(b"\n"):
            raise ConnectionError("the client closed the connection inside a chunked body")
        return line

    def _read_body(self) -> bytes:
        """The body as it came on the wire. A chunked body keeps its framing, chunk extensions
        and trailers, because aws-chunked uploads put their checksums in those trailers: the
        upstream must see exactly what it would have seen without the proxy."""
        if not self._is_chunked():
            return self._read_exactly(int(self.headers.get("Content-Length") or 0))
        raw = bytearray()
        while True:
            line = self._read_line()
            raw += line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            raw += self._read_exactly(size + 2)  # the chunk and its CRLF
        while True:  # trailers, up to the empty line
            line = self._read_line()
            raw += line
            if line in (b"\r\n", b"\n"):
                return bytes(raw)

    def _read_half_body(self) -> None:
        """About half of the body, so that the client is cut off while still uploading."""
        try:
            if self._is_chunked():
                line = self._read_line()
                size = int(line.split(b";", 1)[0].strip(), 16)
                self._read_exactly(size // 2)
            else:
                self._read_exactly(int(self.headers.get("Content-Length") or 0) // 2)
        except (OSError, ValueError):
            pass

    # Answers.

    def _reset(self) -> None:
        """Close with a TCP RST (SO_LINGER on, 0 seconds), not a FIN: what a client sees when
        a load balancer or a dying server drops it, and a different error from a clean close."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The socket only really closes once the file object reading it is closed too (the
        # writer holds no such reference).
        try:
            self.rfile.close()
        except OSError:
            pass
        self.connection.close()

    def _answer_slow_down(self, method: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = _SLOW_DOWN_BODY.format(request_id=request_id, host_id=uuid.uuid4().hex).encode()
        if method == "HEAD":
            body = b""  # S3 sends no body with a HEAD's error, just the status
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", "AmazonS3")
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, method: str, path: str, trickle: bool = False,
                 lose_response: bool = False) -> None:
        """Send the request upstream on a connection of its own and relay the answer (a 502
        when the upstream could not be reached), logging the outcome. A connection per
        request costs little on loopback and means a stale upstream connection can never turn
        into an error the plan did not ask for."""
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except OSError:  # ConnectionError included
            self.close_connection = True
            proxy._log(method, path, "client_gone")
            return
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                              timeout=proxy.upstream_timeout)
        try:
            # The Host header is the client's: SigV4 signs it, so it must reach S3 unchanged.
            upstream.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            if "Host" not in self.headers:
                upstream.putheader("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
            for name, value in self.headers.items():
                lowered = name.lower()
                if lowered in _HOP_BY_HOP or lowered == "expect":
                    continue  # the proxy already said 100 Continue and has the whole body
                if lowered == "content-length" and self._is_chunked():
                    continue  # RFC 9112, 6.3: chunked framing overrides it, so it must not go on
                upstream.putheader(name, value)
            if self._is_chunked():
                upstream.putheader("Transfer-Encoding", self.headers["Transfer-Encoding"])
            upstream.putheader("Connection", "close")
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            status, reason, headers = response.status, response.reason, response.getheaders()
        except OSError:
            status, reason, data = 502, "Bad Gateway", b"upstream unreachable"
            headers = [("Content-Type", "text/plain")]
        finally:
            upstream.close()
        if lose_response:
            proxy._log(method, path, "reset_after_forward", fault="reset_after_forward")
            self._reset()
            return
        proxy._log(method, path, status)

        has_body = method != "HEAD" and status >= 200 and status not in (204, 304)
        try:
            self.send_response_only(status, reason)
            for name, value in headers:
                lowered = name.lower()
                if lowered in _HOP_BY_HOP:
                    continue
                if lowered == "content-length" and has_body:
                    continue  # set below, from what was actually read
                self.send_header(name, value)
            if has_body:
                self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if has_body:
                self._write_body(data, trickle)
        except OSError:
            self.close_connection = True

    def _write_body(self, data: bytes, trickle: bool) -> None:
        if not trickle or not data:
            self.wfile.write(data)
            return
        pieces = min(16, len(data))
        size = -(-len(data) // pieces)
        pause = self.server.proxy.plan.trickle_seconds / pieces
        for start in range(0, len(data), size):
            self.wfile.write(data[start:start + size])
            if start + size < len(data):
                time.sleep(pause)
