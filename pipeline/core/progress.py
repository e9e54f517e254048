"""Progress lines a user can read while a stage runs ("download: 1,200 done ...")."""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("openwit")


class ProgressLog:
    """Counts outcomes of one stage in one DoFn instance and logs a line every few seconds.

    One per DoFn instance, used from the DoFn's own thread; each worker reports its share.
    """

    def __init__(self, stage: str, every_seconds: float = 10.0):
        self._stage = stage
        self._every = every_seconds
        self._started = time.monotonic()
        self._last_log = self._started
        self.ok = 0
        self.failed = 0

    def update(self, ok: int = 0, failed: int = 0) -> None:
        self.ok += ok
        self.failed += failed
        now = time.monotonic()
        if now - self._last_log >= self._every:
            self._last_log = now
            self.log(now)

    def log(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        done = self.ok + self.failed
        if not done:
            return
        rate = done / max(now - self._started, 1e-9)
        LOGGER.info("%s: %s done (%s ok, %s failed), %.1f/s on this worker",
                    self._stage, f"{done:,}", f"{self.ok:,}", f"{self.failed:,}", rate)
