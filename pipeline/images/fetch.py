"""Fetching one URL the way a polite, safe crawler must.

img2dataset's `download_image_with_retry` is not used for the transfer itself, for four
measured reasons: urllib's timeout applies per blocking read, so a server that trickles bytes
holds a thread forever; its retries fire immediately, with no backoff and no Retry-After, so a
429 is retried into another 429; it follows redirects to any address; and it reads bodies of
any size. This module keeps img2dataset's semantics where they matter (its `is_disallowed`
decides X-Robots-Tag opt-outs, its User-Agent shape carries the bot token) and adds:

- one deadline per attempt, from name resolution to the last byte: resolving, connecting,
  sending, the status line, the headers, the body and chunked trailers all wait at most until
  it (every socket read and write re-arms its timeout to what is left); http.client bounds
  the headers (100 lines of at most 64 KiB);
- retries only for 429, 5xx and connection errors, after `Retry-After` or exponential backoff;
- redirects followed by hand, each target checked by the same address policy;
- a body size limit, checked against Content-Length and while reading;
- an address policy: by default no loopback, private, link-local (cloud metadata servers),
  multicast or reserved targets, checked on the address actually connected to;
- politeness: each answer's status goes to the worker's `HostGate`, a fetch does not retry a
  host that gate has paused (it hands the candidate back, `deferred`), and with
  `--robots-txt` every hop is first checked against its origin's robots.txt.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import math
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse

from openwit.pipeline.core.records import Reason, opt_out_detail
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.hosts import HostGate, host_of
from openwit.pipeline.images.robots import ROBOTS_MAX_BYTES, ROBOTS_MIN_REDIRECTS, RobotsCache

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
RETRYABLE_STATUSES = (429, 500, 502, 503, 504)
READ_CHUNK = 256 * 1024
BASE_BACKOFF_SECONDS = 0.5


@dataclasses.dataclass
class FetchResult:
    body: bytes | None
    reason: str | None = None  # a `Reason` when body is None
    detail: str = ""
    status: int | None = None
    final_url: str | None = None
    attempts: int = 1
    deferred: bool = False  # the host is paused: not (re)tried, to be scheduled again


@dataclasses.dataclass(frozen=True)
class _Purpose:
    """What a fetch is for: an image (its limits, opt-outs obeyed) or a robots.txt (RFC 9309:
    at least five redirects followed, the first 500 KiB read and the rest ignored)."""

    max_bytes: int
    max_redirects: int
    obey_opt_outs: bool
    keep_first_bytes: bool = False  # a longer body is cut at max_bytes instead of refused


class BlockedAddress(Exception):
    """The host resolved only to addresses the policy forbids."""


NAT64_NETWORKS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translation or a tunnel:
    IPv4-mapped, 6to4 (2002::/16), Teredo (2001::/32: its server and its client) and NAT64
    (64:ff9b::/96, 64:ff9b:1::/48)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    if any(ip in network for network in NAT64_NETWORKS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def parse_networks(specs) -> tuple:
    """CIDR strings -> ip_network objects; a bare address is a /32 or /128."""
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs if spec.strip())


def address_block_reason(address: str, allow_private: bool = False,
                         allowed_networks: tuple = ()) -> str | None:
    """Why a connection to this IP must not be made, or None. Pure: opens nothing.

    `allowed_networks` (ip_network objects, `--allow-network`) lets exactly those networks
    through, whatever they are; everything else is judged as usual. An IPv6 address that
    reaches an IPv4 one (mapped, 6to4, Teredo, NAT64) is judged by that address too."""
    ip = ipaddress.ip_address(address)
    judged = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        judged = embedded_ipv4(ip) or [ip]
    for candidate in judged:
        reason = _one_address_reason(candidate, allow_private, allowed_networks)
        if reason is not None:
            return reason if candidate == ip else f"{ip} reaches {reason}"
    return None


def _one_address_reason(ip, allow_private: bool, allowed_networks: tuple) -> str | None:
    if any(ip.version == network.version and ip in network for network in allowed_networks):
        return None
    if ip.is_multicast or ip.is_unspecified or (ip.is_reserved and not ip.is_private):
        return f"{ip} is a multicast, unspecified or reserved address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return f"{ip} is a site-local address (fec0::/10)"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata servers live here)"
    if ip.is_private or not ip.is_global:
        return f"{ip} is a private or non-global address"
    return None


def url_block_reason(url: str, allow_private: bool = False,
                     allowed_networks: tuple = ()) -> str | None:
    """Why this URL must not be fetched, decided without any network traffic, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        return f"unparsable URL: {err}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http(s)"
    host = parts.hostname
    if not host:
        return "no host"
    if port == 0:
        return "port 0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if (not allow_private and not allowed_networks
                and (host == "localhost" or host.endswith(".localhost"))):
            return f"{host} names the local machine"
        return None  # a host name: its addresses are checked when connecting
    return address_block_reason(host, allow_private, allowed_networks)


DEADLINE_PASSED = "the response's deadline passed"


def remaining_until(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(DEADLINE_PASSED)
    return remaining


class _DeadlineSocket(socket.socket):
    """A socket whose every read and write waits at most until its `deadline`: a server that
    sends one byte of a header line every half second is cut off at the deadline, not after
    a per-read timeout for each byte."""

    deadline = math.inf

    def recv_into(self, buffer, nbytes=0, flags=0):
        self.settimeout(remaining_until(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize, flags=0):
        self.settimeout(remaining_until(self.deadline))
        return super().recv(bufsize, flags)

    def sendall(self, data, flags=0):
        self.settimeout(remaining_until(self.deadline))
        return super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS layer of a `_DeadlineSocket`: its reads and writes re-arm the same deadline."""

    deadline = math.inf

    def recv_into(self, buffer, nbytes=None, flags=0):
        self.settimeout(remaining_until(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data, flags=0):
        self.settimeout(remaining_until(self.deadline))
        return super().sendall(data, flags)


def _guarded_socket(host: str, port: int, deadline: float, policy: dict,
                    resolve) -> socket.socket:
    """Resolve, check every address, connect only to an allowed one (no DNS rebinding gap);
    resolution and every connection attempt share the response's deadline."""
    blocked = []
    last_error: OSError | None = None
    for family, kind, proto, _, address in resolve(host, port, deadline):
        reason = address_block_reason(address[0], **policy)
        if reason is not None:
            blocked.append(reason)
            continue
        sock = _DeadlineSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.settimeout(remaining_until(deadline))
            sock.connect(address)
            return sock
        except OSError as err:
            sock.close()
            if isinstance(err, TimeoutError) and time.monotonic() >= deadline:
                raise
            last_error = err
    if last_error is not None:
        raise last_error
    raise BlockedAddress("; ".join(blocked) or f"{host} resolved to no address")


class _Guarded:
    """What both connection classes add: the address policy, the deadline, the resolver."""

    def __init__(self, *args, policy: dict, deadline: float, resolve, **kwargs):
        super().__init__(*args, **kwargs)
        self._policy = policy
        self._deadline = deadline
        self._resolve = resolve

    def _guarded_socket(self) -> socket.socket:
        return _guarded_socket(self.host, self.port, self._deadline, self._policy, self._resolve)


class _GuardedHTTPConnection(_Guarded, http.client.HTTPConnection):
    def connect(self):
        self.sock = self._guarded_socket()


class _GuardedHTTPSConnection(_Guarded, http.client.HTTPSConnection):
    def connect(self):
        sock = self._guarded_socket()
        sock.settimeout(remaining_until(self._deadline))  # the TLS handshake
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self.sock.deadline = self._deadline


def request_target(parts: urllib.parse.SplitResult) -> str:
    """Path and query as HTTP wants them: web URLs carry raw spaces and non-ASCII characters."""
    safe = "/%:@!$&'()*+,;=~-._?"
    target = urllib.parse.quote(parts.path or "/", safe=safe)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=safe)
    return target


def user_agent(token: str) -> str:
    # img2dataset's shape: a browser-like prefix, then the bot token that X-Robots-Tag rules
    # scoped to this crawler ("openwit: noai") are matched against.
    return f"Mozilla/5.0 (compatible; {token}; +https://github.com/openwit/openwit)"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Fetcher:
    """Thread-safe: holds configuration, one connection per request, and a pool that resolves
    names under the response's deadline (`getaddrinfo` itself takes no timeout).

    `getaddrinfo` is injectable so that tests can judge what a name resolves to without a
    single packet leaving the machine."""

    def __init__(self, config: DownloadConfig, is_disallowed, getaddrinfo=socket.getaddrinfo,
                 resolver_threads: int | None = None, hosts: HostGate | None = None):
        self._config = config
        self._hosts = hosts
        self._getaddrinfo = getaddrinfo
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=resolver_threads or config.threads,
            thread_name_prefix="openwit-resolve")
        self._is_disallowed = is_disallowed  # img2dataset.downloader.is_disallowed
        self._token = config.user_agent_token.strip().lower()
        self._directives = {d.strip().lower() for d in config.disallowed_directives}
        self._headers = {
            "User-Agent": user_agent(config.user_agent_token),
            "Accept": "image/avif,image/webp,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        self._ssl_context = ssl.create_default_context()
        self._ssl_context.sslsocket_class = _DeadlineSSLSocket
        self._policy = {"allow_private": config.allow_private_hosts,
                        "allowed_networks": parse_networks(config.allowed_networks)}
        self._image = _Purpose(config.max_bytes, config.max_redirects, obey_opt_outs=True)
        self._robots_txt = _Purpose(ROBOTS_MAX_BYTES, max(ROBOTS_MIN_REDIRECTS,
                                                          config.max_redirects),
                                    obey_opt_outs=False, keep_first_bytes=True)
        self._robots = None
        if config.robots_txt:
            self._robots = RobotsCache(self._fetch_robots_txt, self._token,
                                       wait_seconds=self._longest_plain_fetch + 1.0)

    def close(self) -> None:
        self._resolver.shutdown(wait=False, cancel_futures=True)

    def resolve(self, host: str, port: int, deadline: float):
        """getaddrinfo within the deadline; an IP literal needs no resolver thread."""
        try:
            ipaddress.ip_address(host)
            return self._getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except ValueError:
            pass
        future = self._resolver.submit(self._getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            return future.result(timeout=remaining_until(deadline))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"resolving {host} took longer than the deadline") from None

    @property
    def _longest_plain_fetch(self) -> float:
        attempts = self._config.retries + 1
        return attempts * self._config.timeout + self._config.retries * self._config.max_retry_wait

    @property
    def longest_fetch_seconds(self) -> float:
        """An upper bound on one `fetch`: every attempt's deadline plus the waits between, and
        with robots.txt on, a robots.txt fetch before every hop."""
        if self._robots is None:
            return self._longest_plain_fetch
        hops = self._config.max_redirects + 1
        robots_waits = (self._config.retries + 1) * hops * (self._longest_plain_fetch + 1.0)
        return self._longest_plain_fetch + robots_waits

    def fetch(self, url: str) -> FetchResult:
        """An image URL: opt-outs obeyed, its host's pauses respected."""
        return self._fetch(url, self._image, gate=self._hosts)

    def _fetch_robots_txt(self, url: str) -> FetchResult:
        return self._fetch(url, self._robots_txt, gate=None)

    def _fetch(self, url: str, purpose: _Purpose, gate: HostGate | None) -> FetchResult:
        """Attempts with backoff. The gate hears each answer from the host that gave it (a
        redirect target's 429s pause the target); a retry is not sent to a paused host."""
        attempts = self._config.retries + 1
        for attempt in range(1, attempts + 1):
            if gate is not None and gate.is_paused(host_of(url)):
                return FetchResult(None, Reason.HOST_BACKED_OFF, "the host is paused",
                                   final_url=url, attempts=attempt - 1, deferred=True)
            result, retry_after = self._fetch_once(url, purpose)
            result.attempts = attempt
            answered_by = host_of(result.final_url or url)
            if gate is not None:
                gate.observe(answered_by, result.status, retry_after)
            if retry_after is None or attempt == attempts:
                return result
            if gate is not None and (gate.is_paused(answered_by)
                                     or gate.is_paused(host_of(url))):
                result.deferred = True
                return result
            backoff = BASE_BACKOFF_SECONDS * 2 ** (attempt - 1)
            time.sleep(min(self._config.max_retry_wait, max(backoff, retry_after)))
        raise AssertionError("unreachable: the last attempt returns")

    def _fetch_once(self, url: str, purpose: _Purpose) -> tuple[FetchResult, float | None]:
        """One attempt, redirects included. Returns the result and, if retryable, a wait."""
        deadline = time.monotonic() + self._config.timeout
        current = url
        for hop in range(purpose.max_redirects + 1):
            block = url_block_reason(current, **self._policy)
            if block is not None:
                reason = Reason.URL_BLOCKED if hop == 0 else Reason.REDIRECT_BLOCKED
                return FetchResult(None, reason, block, final_url=current), None
            if purpose.obey_opt_outs and self._robots is not None:
                # The robots.txt fetch has a deadline of its own; waiting for it does not
                # shorten this response's.
                asked = time.monotonic()
                refusal = self._robots.refusal(current)
                deadline += time.monotonic() - asked
                if refusal is not None:
                    return FetchResult(None, *refusal, final_url=current), None
            try:
                outcome = self._request(current, deadline, purpose)
            except BlockedAddress as err:
                reason = Reason.URL_BLOCKED if hop == 0 else Reason.REDIRECT_BLOCKED
                return FetchResult(None, reason, str(err), final_url=current), None
            except TimeoutError as err:
                # Which timer noticed first (the deadline check or the socket's own timeout)
                # is a race: neither is named, so that every run writes the same record.
                why = f" ({err})" if str(err) not in ("", DEADLINE_PASSED, "timed out") else ""
                return FetchResult(None, Reason.TIMEOUT, f"no complete response within "
                                   f"{self._config.timeout:g} s{why}", final_url=current), None
            except (ValueError, UnicodeError) as err:  # e.g. a Location no URL parser accepts
                return FetchResult(None, Reason.INVALID_URL, f"{type(err).__name__}: {err}",
                                   final_url=current), None
            except ssl.SSLError as err:  # a bad certificate stays bad: no retry
                return FetchResult(None, Reason.CONNECTION_ERROR, f"TLS: {err}",
                                   final_url=current), None
            except (OSError, http.client.HTTPException) as err:
                detail = f"{type(err).__name__}: {err}"
                return FetchResult(None, Reason.CONNECTION_ERROR, detail, final_url=current), 0.0
            if isinstance(outcome, str):  # a redirect target
                current = urllib.parse.urljoin(current, outcome)
                continue
            return outcome
        return FetchResult(None, Reason.TOO_MANY_REDIRECTS,
                           f"more than {purpose.max_redirects} redirects",
                           final_url=current), None

    def _request(self, url: str, deadline: float, purpose: _Purpose):
        parts = urllib.parse.urlsplit(url)
        remaining = remaining_until(deadline)
        path = request_target(parts)
        guard = {"policy": self._policy, "deadline": deadline, "resolve": self.resolve}
        if parts.scheme.lower() == "https":
            conn = _GuardedHTTPSConnection(parts.hostname, parts.port or 443, timeout=remaining,
                                           context=self._ssl_context, **guard)
        else:
            conn = _GuardedHTTPConnection(parts.hostname, parts.port or 80, timeout=remaining,
                                          **guard)
        host_header = parts.hostname.encode("idna").decode("ascii")
        if ":" in host_header:
            host_header = f"[{host_header}]"
        if parts.port:
            host_header += f":{parts.port}"
        try:
            conn.request("GET", path, headers={**self._headers, "Host": host_header})
            response = conn.getresponse()
            try:
                return self._handle(url, response, deadline, purpose)
            finally:
                response.close()
        finally:
            conn.close()

    def _handle(self, url, response, deadline, purpose: _Purpose):
        status = response.status
        if status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                return FetchResult(None, Reason.HTTP_OTHER, f"{status} without Location",
                                   status=status, final_url=url), None
            return location
        if status != 200:
            return self._status_failure(url, response)
        if purpose.obey_opt_outs and self._directives and self._is_disallowed(
                response.headers, self._token, self._directives):
            return FetchResult(None, Reason.OPTED_OUT, self._opt_out_detail(response.headers),
                               status=status, final_url=url), None
        max_bytes = purpose.max_bytes
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            if not purpose.keep_first_bytes:
                return FetchResult(None, Reason.BODY_TOO_LARGE, f"Content-Length {length}",
                                   status=status, final_url=url), None
            length = None  # only the first max_bytes are read
        chunks, size = [], 0
        while True:
            remaining_until(deadline)
            chunk = response.read1(READ_CHUNK)
            if not chunk:
                break
            if size + len(chunk) > max_bytes:
                if not purpose.keep_first_bytes:
                    return FetchResult(None, Reason.BODY_TOO_LARGE,
                                       f"more than {max_bytes} bytes", status=status,
                                       final_url=url), None
                chunks.append(chunk[:max_bytes - size])
                return FetchResult(b"".join(chunks), status=status, final_url=url), None
            size += len(chunk)
            chunks.append(chunk)
        # The last read may have been a flood of chunked trailers: success only within the
        # deadline.
        remaining_until(deadline)
        if length and length.isdigit() and size < int(length):
            return FetchResult(None, Reason.CONNECTION_ERROR,
                               f"body ended after {size} of {length} bytes", status=status,
                               final_url=url), 0.0
        return FetchResult(b"".join(chunks), status=status, final_url=url), None

    def _opt_out_detail(self, headers) -> str:
        """Which of our directives the X-Robots-Tag headers carry (each asked of img2dataset's
        own matcher, so that the count agrees with its decision), then the headers."""
        matched = [directive for directive in sorted(self._directives)
                   if self._is_disallowed(headers, self._token, {directive})]
        values = ", ".join(headers.get_all("X-Robots-Tag", []))
        return opt_out_detail(matched, f"X-Robots-Tag: {values}")

    def _status_failure(self, url, response):
        status = response.status
        retry_after = None
        if status in RETRYABLE_STATUSES:
            retry_after = parse_retry_after(response.getheader("Retry-After")) or 0.0
        if status == 404:
            reason = Reason.HTTP_NOT_FOUND
        elif status == 429:
            reason = Reason.HTTP_RATE_LIMITED
        elif 500 <= status < 600:
            reason = Reason.HTTP_SERVER_ERROR
        elif 400 <= status < 500:
            reason = Reason.HTTP_CLIENT_ERROR
        else:
            reason = Reason.HTTP_OTHER
        result = FetchResult(None, reason, f"HTTP {status} {response.reason}", status=status,
                             final_url=url)
        return result, retry_after
