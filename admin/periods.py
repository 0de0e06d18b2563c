"""The usage tab's period picker: presets and a custom range of UTC days, both ends inclusive."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from storage.usage import month_bounds

PRESETS = {
    "today": "Today",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "month": "This month",
}
DEFAULT = "30d"
MAX_DAYS = 3 * 366


@dataclass(frozen=True)
class Period:
    key: str  # a preset's key, or "custom"
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def label(self) -> str:
        if self.key in PRESETS:
            return PRESETS[self.key]
        return f"{self.start.isoformat()} to {self.end.isoformat()}"

    def query(self) -> dict[str, str]:
        """The URL parameters that select this period again (for links and the CSV export)."""
        if self.key in PRESETS:
            return {"period": self.key}
        return {"period": "custom", "start": self.start.isoformat(), "end": self.end.isoformat()}


def preset(key: str, today: date) -> Period:
    if key == "today":
        return Period(key, today, today)
    if key == "7d":
        return Period(key, today - timedelta(days=6), today)
    if key == "30d":
        return Period(key, today - timedelta(days=29), today)
    if key == "month":
        first, last = month_bounds(datetime.combine(today, time(12), tzinfo=UTC))
        return Period(key, first, last)
    raise ValueError(f"unknown period {key!r}")


def resolve(args: Mapping[str, str], today: date) -> Period:
    """The period the request asks for; ValueError with a message for a bad custom range."""
    key = args.get("period") or DEFAULT
    if key in PRESETS:
        return preset(key, today)
    if key != "custom":
        raise ValueError("Unknown period; showing the last 30 days.")
    try:
        start = date.fromisoformat(args.get("start", "").strip())
        end = date.fromisoformat(args.get("end", "").strip())
    except ValueError:
        raise ValueError("Custom range: enter both dates, like 2026-01-01.") from None
    if end < start:
        raise ValueError("Custom range: the end date is before the start date.")
    if (end - start).days + 1 > MAX_DAYS:
        raise ValueError(f"Custom range: choose at most {MAX_DAYS} days.")
    return Period("custom", start, end)
