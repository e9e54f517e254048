"""Politeness per host: how many requests one worker has in flight to a host, and when a host
that keeps answering 429/503 is paused or given up.

A `HostGate` belongs to one download DoFn instance (one worker's share of the job). The DoFn's
scheduler takes a slot before it hands a candidate to the fetch pool and gives it back when
the fetch ends, so a candidate waiting for its host holds no thread, and candidates of other
hosts go first. The fetch threads report each answer's status; after `cooldown_after` 429 or
503 answers in a row the host is paused for `host_cooldown` seconds (or its Retry-After, up
to four times that), and a host paused more than `max_host_cooldowns` times is given up.

A host is the URL's host name as written (lowercased), port excluded: two ports of one
machine are one host to be polite to. The slot is the host the URL names (the scheduler
knows nothing else before the fetch); each answer counts for the host that gave it, so a
redirect target that answers 429 is the one paused.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse

from openwit.pipeline.images.config import DownloadConfig

SLOW_DOWN_STATUSES = (429, 503)
COOLDOWN_STRETCH = 4.0  # Retry-After may lengthen a cool-down up to this many times


def host_of(url: str) -> str:
    """The host a URL's request goes to; "" for a URL without one (the fetcher refuses it)."""
    try:
        return (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


@dataclasses.dataclass
class _HostState:
    in_flight: int = 0
    slow_downs_in_a_row: int = 0
    cooldowns: int = 0
    paused_until: float = 0.0
    given_up: bool = False


class HostGate:
    """Thread-safe per-host slots, cool-downs and give-ups, for one worker."""

    def __init__(self, config: DownloadConfig, clock=time.monotonic):
        if config.max_per_host < 1 or config.cooldown_after < 1:
            raise ValueError("max_per_host and cooldown_after must be at least 1")
        self._max_per_host = config.max_per_host
        self._cooldown_after = config.cooldown_after
        self._cooldown = config.host_cooldown
        self._max_cooldowns = config.max_host_cooldowns
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}

    @property
    def longest_pause(self) -> float:
        return self._cooldown * COOLDOWN_STRETCH

    def try_acquire(self, host: str) -> bool:
        """Take one of the host's slots if it has a free one and is neither paused nor given
        up."""
        with self._lock:
            state = self._hosts.setdefault(host, _HostState())
            if state.given_up or state.in_flight >= self._max_per_host:
                return False
            if state.paused_until > self._clock():
                return False
            state.in_flight += 1
            return True

    def release(self, host: str) -> None:
        with self._lock:
            state = self._hosts[host]
            state.in_flight -= 1
            if not (state.in_flight or state.given_up or state.cooldowns
                    or state.slow_downs_in_a_row):
                del self._hosts[host]  # a host with nothing to remember costs no memory

    def observe(self, host: str, status: int | None, retry_after: float | None = None) -> None:
        """One answer from the host: a 429/503 counts towards a cool-down, any other status
        ends the run of them; no status (a connection error, a timeout) changes nothing."""
        if status is None:
            return
        with self._lock:
            state = self._hosts.setdefault(host, _HostState())
            if status not in SLOW_DOWN_STATUSES:
                state.slow_downs_in_a_row = 0
                return
            state.slow_downs_in_a_row += 1
            if state.slow_downs_in_a_row < self._cooldown_after:
                return
            state.slow_downs_in_a_row = 0
            if state.paused_until > self._clock():
                return  # answers to requests sent before the pause began
            state.cooldowns += 1
            if state.cooldowns > self._max_cooldowns:
                state.given_up = True
                return
            pause = min(max(self._cooldown, retry_after or 0.0), self.longest_pause)
            state.paused_until = self._clock() + pause

    def is_paused(self, host: str) -> bool:
        """Paused or given up: a fetch about to (re)try this host should not."""
        with self._lock:
            state = self._hosts.get(host)
            return state is not None and (state.given_up or state.paused_until > self._clock())

    def given_up(self, host: str) -> bool:
        with self._lock:
            state = self._hosts.get(host)
            return state is not None and state.given_up

    def seconds_until_resumed(self, hosts) -> float | None:
        """How long until the first of these paused hosts may be asked again (None: none is
        paused)."""
        now = self._clock()
        with self._lock:
            waits = [self._hosts[h].paused_until - now for h in hosts
                     if h in self._hosts and self._hosts[h].paused_until > now]
        return max(0.0, min(waits)) if waits else None

    def describe_give_up(self) -> str:
        return (f"the host answered 429/503 {self._cooldown_after} times in a row after "
                f"{self._max_cooldowns} cool-downs of {self._cooldown:g} s or more; not asked "
                "again by this worker")
