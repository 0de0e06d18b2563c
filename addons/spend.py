"""Euros spent per key and in total, in the current UTC day, week and month, kept in memory.

Loaded from the database (storage.spend, the daily rollup the usage page shows) once at start;
from then on every metered request is added the moment it ends, with the cost its usage row will
carry (addons/quota.py prices it with the writer's own make_record). The database is not read
again: the gateway is the only writer of usage, so "what the database had at start, plus every
request finished since" is the exact spend, whereas a reload would miss the rows still on their
way to the database (a flush window, or more while the database cannot be written).

All three periods are counted for every key, whether or not it has a budget: a budget set or
changed live applies at once, to the spend already made in its period. A period that ends
starts the next one at zero: its requests are the ones this process counts from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime

from storage import spend


class _Current:
    """One period kind's current calendar period and what was spent in it."""

    __slots__ = ("period", "end", "by_key", "total")

    def __init__(self, period: spend.Period, by_key: dict[str, float]) -> None:
        self.period = period
        self.end = period.end.timestamp()  # compared with time.time() on every request
        self.by_key = by_key
        self.total = sum(by_key.values())


class SpendCounters:
    """Event loop only: reads and additions need no lock."""

    def __init__(self) -> None:
        self._current: dict[str, _Current] = {}

    def load(self, now: float) -> None:
        """Read each period's spend so far from the database (one query per period kind)."""
        at = datetime.fromtimestamp(now, UTC)
        for name in spend.PERIODS:
            period = spend.period_at(name, at)
            self._current[name] = _Current(period, spend.spend_by_key(period))

    def _at(self, name: str, now: float) -> _Current:
        current = self._current[name]
        if now >= current.end:
            # Only later requests belong to the new period, and they are counted as they end.
            current = self._current[name] = _Current(
                spend.period_at(name, datetime.fromtimestamp(now, UTC)), {}
            )
        return current

    def period(self, name: str, now: float) -> spend.Period:
        return self._at(name, now).period

    def of_key(self, key_id: str, name: str, now: float) -> float:
        return self._at(name, now).by_key.get(key_id, 0.0)

    def total(self, name: str, now: float) -> float:
        return self._at(name, now).total

    def add(self, key_id: str, eur: float, ts: float) -> None:
        """A finished request's cost; `ts` is its usage row's time, which decides its day."""
        if not eur:
            return
        for name in spend.PERIODS:
            # A clock set back puts `ts` before the period's start: it still counts in the current one.
            current = self._at(name, ts)
            current.by_key[key_id] = current.by_key.get(key_id, 0.0) + eur
            current.total += eur
