"""Refuse an address for a while after repeated failed logins from it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MAX_ADDRESSES = 10_000


class Lockout:
    """After `max_failures` failures within `window` seconds, refuse for `duration` seconds."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        duration: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window = window
        self.duration = duration
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def remaining(self, addr: str) -> float:
        """Seconds `addr` stays refused; 0 when it may try."""
        with self._lock:
            until = self._locked_until.get(addr)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._locked_until[addr]
                return 0.0
            return left

    def failed(self, addr: str) -> bool:
        """Count a failure; True when it locks `addr` out."""
        now = self.clock()
        with self._lock:
            if len(self._failures) >= MAX_ADDRESSES:
                self._forget_old(now)
            times = self._failures.setdefault(addr, deque())
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(times) < self.max_failures:
                return False
            self._locked_until[addr] = now + self.duration
            del self._failures[addr]
            return True

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._failures.pop(addr, None)

    def _forget_old(self, now: float) -> None:
        for addr in [a for a, times in self._failures.items() if now - times[-1] > self.window]:
            del self._failures[addr]
        for addr in [a for a, until in self._locked_until.items() if until <= now]:
            del self._locked_until[addr]
