"""addons/spend.py: the spend counters, loaded from the daily rollup, then counted in memory."""

from __future__ import annotations

from datetime import UTC, datetime

from addons.spend import SpendCounters
from storage import spend, usage
from storage.usage import UsageRecord

# A Friday: its week began on Monday the 7th (ISO weeks), its month on the 1st.
NOW = datetime(2026, 12, 11, 12, tzinfo=UTC)


def row(key_id: str, when: datetime, eur: float) -> UsageRecord:
    return UsageRecord(when, key_id, "/v1/chat/completions", "m", 200, cost_eur=eur)


def test_counters_start_from_the_database_for_each_period(db_path):
    usage.record_batch(
        [
            row("a", datetime(2026, 11, 30, tzinfo=UTC), 100.0),  # last month: in no period
            row("a", datetime(2026, 12, 2, tzinfo=UTC), 1.0),  # this month
            row("a", datetime(2026, 12, 9, tzinfo=UTC), 2.0),  # this week
            row("a", datetime(2026, 12, 11, 1, tzinfo=UTC), 4.0),  # today
            row("b", datetime(2026, 12, 11, 2, tzinfo=UTC), 8.0),
        ]
    )
    counters = SpendCounters()
    counters.load(NOW.timestamp())
    now = NOW.timestamp()
    assert [counters.of_key("a", name, now) for name in spend.PERIODS] == [4.0, 6.0, 7.0]
    assert [counters.total(name, now) for name in spend.PERIODS] == [12.0, 14.0, 15.0]
    assert counters.of_key("c", "month", now) == 0.0


def test_a_request_counts_in_every_period_at_its_time(db_path):
    counters = SpendCounters()
    counters.load(NOW.timestamp())
    counters.add("a", 0.25, NOW.timestamp())
    counters.add("b", 0.5, NOW.timestamp())
    now = NOW.timestamp()
    assert [counters.of_key("a", name, now) for name in spend.PERIODS] == [0.25, 0.25, 0.25]
    assert counters.total("week", now) == 0.75


def test_a_new_period_starts_at_zero_and_the_others_go_on(db_path):
    counters = SpendCounters()
    counters.load(NOW.timestamp())
    counters.add("a", 1.0, NOW.timestamp())
    tomorrow = datetime(2026, 12, 12, 0, 0, 1, tzinfo=UTC).timestamp()
    assert counters.of_key("a", "day", tomorrow) == 0.0
    assert counters.period("day", tomorrow).start == datetime(2026, 12, 12, tzinfo=UTC)
    assert counters.of_key("a", "week", tomorrow) == 1.0 and counters.total("month", tomorrow) == 1.0
    counters.add("a", 2.0, tomorrow)
    assert counters.of_key("a", "day", tomorrow) == 2.0 and counters.of_key("a", "month", tomorrow) == 3.0
    next_month = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    # 1 January 2027 is a Friday: a new month, and a new week since Monday 28 December.
    assert counters.total("month", next_month) == 0.0 and counters.total("week", next_month) == 0.0


def test_a_request_that_ends_after_midnight_counts_in_the_new_day(db_path):
    # Its usage row carries the time it ended, so the rollup puts it in the new day too.
    counters = SpendCounters()
    counters.load(NOW.timestamp())
    counters.add("a", 1.0, datetime(2026, 12, 12, 0, 0, 1, tzinfo=UTC).timestamp())
    assert counters.of_key("a", "day", datetime(2026, 12, 12, 1, tzinfo=UTC).timestamp()) == 1.0


def test_a_request_that_cost_nothing_adds_no_entry(db_path):
    counters = SpendCounters()
    counters.load(NOW.timestamp())
    counters.add("a", 0.0, NOW.timestamp())
    assert counters._current["month"].by_key == {}
