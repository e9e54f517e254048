"""robots.txt, read once per origin and worker, obeyed as RFC 9309 says (`--robots-txt`).

Protego (Scrapy's parser) matches the rules: unlike Python's urllib.robotparser it knows the
`*` and `$` wildcards and picks the most specific group for our token. This module decides
what a robots.txt *answer* means:

- 200: its rules, from its first `ROBOTS_MAX_BYTES` (RFC 9309's minimum; the rest is
  ignored), after up to five redirects or `--max-redirects`, whichever is more;
- any 4xx except 429, no body (204), a 3xx that redirects nowhere (304, no Location), or
  more redirects than that: "unavailable", everything is allowed;
- 429, 5xx, a timeout, a refused connection, an address the policy blocks, a file the parser
  raises on: "unreachable", everything is disallowed, and the verdict is retried sooner.

One request per origin: the first fetch thread that needs an origin's robots.txt fetches it,
the others wait for that verdict. Verdicts are cached for a day at most (RFC 9309's
recommendation), for a bounded number of origins (LRU).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import urllib.parse

from openwit.pipeline.core.records import ROBOTS_TXT_DIRECTIVE, Reason, opt_out_detail

ROBOTS_MAX_BYTES = 500 * 1024
ROBOTS_MIN_REDIRECTS = 5  # RFC 9309: follow at least five, whatever images are allowed
ROBOTS_CACHE_ORIGINS = 512
ROBOTS_CACHE_SECONDS = 24 * 3600.0
ROBOTS_UNREACHABLE_CACHE_SECONDS = 600.0

_ALLOW_ALL_REASONS = (Reason.HTTP_NOT_FOUND, Reason.HTTP_CLIENT_ERROR, Reason.TOO_MANY_REDIRECTS)


def robots_url(url: str) -> str | None:
    """The robots.txt URL of a URL's origin (scheme, host, port); None if it has none."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.scheme.lower() not in ("http", "https"):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    return f"{parts.scheme.lower()}://{netloc}/robots.txt"


@dataclasses.dataclass(frozen=True)
class RobotsVerdict:
    """What one origin's robots.txt says: rules, allow everything, or disallow everything."""

    source: str  # the robots.txt URL
    rules: object | None = None  # a protego.Protego when the file was read
    unreachable: str = ""  # why everything is disallowed; "" when it is not
    expires_at: float = 0.0

    def refusal(self, url: str, token: str) -> tuple[str, str] | None:
        """(reason, detail) if this URL may not be fetched, else None."""
        if self.unreachable:
            return Reason.ROBOTS_UNREACHABLE, f"{self.source}: {self.unreachable}"
        if self.rules is not None and not self.rules.can_fetch(url, token):
            return Reason.OPTED_OUT, opt_out_detail(
                [ROBOTS_TXT_DIRECTIVE], f"{self.source} disallows it for {token}")
        return None


def verdict_from(source: str, result, now: float) -> RobotsVerdict:
    """A fetch result of a robots.txt URL (a `fetch.FetchResult`) -> its verdict."""
    from protego import Protego

    fresh = now + ROBOTS_CACHE_SECONDS
    if result.body is not None:
        text = result.body.decode("utf-8", errors="replace").lstrip("\ufeff")
        try:
            rules = Protego.parse(text)
        except Exception as err:  # noqa: BLE001: a parser bug on hostile text is this origin's
            return RobotsVerdict(source, unreachable=f"does not parse ({type(err).__name__})",
                                 expires_at=now + ROBOTS_UNREACHABLE_CACHE_SECONDS)
        return RobotsVerdict(source, rules=rules, expires_at=fresh)
    status = result.status
    if result.reason in _ALLOW_ALL_REASONS and status != 429:
        return RobotsVerdict(source, expires_at=fresh)
    if result.reason == Reason.HTTP_OTHER and status is not None and 200 <= status < 400:
        return RobotsVerdict(source, expires_at=fresh)
    why = f"{result.reason}: {result.detail}" if result.detail else result.reason
    return RobotsVerdict(source, unreachable=f"unreachable ({why}), so everything is disallowed",
                         expires_at=now + ROBOTS_UNREACHABLE_CACHE_SECONDS)


class _Pending:
    def __init__(self):
        self.done = threading.Event()
        self.verdict: RobotsVerdict | None = None


class RobotsCache:
    """Thread-safe; `fetch_robots(url) -> FetchResult` is the guarded fetcher, without opt-out
    checks and with `ROBOTS_MAX_BYTES` as its size limit."""

    def __init__(self, fetch_robots, token: str, wait_seconds: float, clock=time.monotonic):
        self._fetch_robots = fetch_robots
        self._token = token
        self._wait_seconds = wait_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Pending] = collections.OrderedDict()

    def refusal(self, url: str) -> tuple[str, str] | None:
        source = robots_url(url)
        if source is None:
            return None  # the fetcher refuses such a URL by itself
        return self.verdict(source).refusal(url, self._token)

    def verdict(self, source: str) -> RobotsVerdict:
        with self._lock:
            entry = self._entries.get(source)
            fetch_here = entry is None or (entry.verdict is not None
                                           and entry.verdict.expires_at <= self._clock())
            if fetch_here:
                entry = self._entries[source] = _Pending()
                while len(self._entries) > ROBOTS_CACHE_ORIGINS:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(source)
        if fetch_here:
            try:
                entry.verdict = verdict_from(source, self._fetch_robots(source), self._clock())
            finally:
                if entry.verdict is None:  # the fetch raised: nobody may wait for it
                    entry.verdict = RobotsVerdict(source, unreachable="the fetch failed")
                entry.done.set()
        elif not entry.done.wait(self._wait_seconds):
            return RobotsVerdict(source, unreachable="still being fetched for another request "
                                 f"after {self._wait_seconds:g} s")
        return entry.verdict
