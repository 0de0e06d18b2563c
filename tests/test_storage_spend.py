"""storage.spend: calendar budget periods in UTC, and the spend in them from the daily rollup."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from storage import spend, usage
from storage.usage import UsageRecord


@pytest.mark.parametrize(
    ("name", "now", "start", "end"),
    [
        ("day", datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 31), datetime(2027, 1, 1)),
        ("week", datetime(2026, 11, 25, 12, tzinfo=UTC), datetime(2026, 11, 23), datetime(2026, 11, 30)),
        ("week", datetime(2026, 12, 30, tzinfo=UTC), datetime(2026, 12, 28), datetime(2027, 1, 4)),
        ("month", datetime(2026, 12, 15, tzinfo=UTC), datetime(2026, 12, 1), datetime(2027, 1, 1)),
        ("month", datetime(2027, 1, 31, 23, tzinfo=UTC), datetime(2027, 1, 1), datetime(2027, 2, 1)),
        # 00:30 in UTC+2 is still the previous day in UTC.
        (
            "day",
            datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 2, 28),
            datetime(2026, 3, 1),
        ),
    ],
)
def test_periods_are_utc_calendar_periods(name, now, start, end):
    period = spend.period_at(name, now)
    assert (period.start, period.end) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))


def test_an_unknown_period_is_refused():
    with pytest.raises(ValueError, match="budget period"):
        spend.period_at("year", datetime.now(UTC))


def test_spend_counts_from_the_period_start(db_path):
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    chat = "/v1/chat/completions"
    usage.record_batch(
        [
            UsageRecord(now, "a", chat, "gpt-oss-120b", 200, cost_eur=0.5),
            UsageRecord(now - timedelta(days=1), "a", chat, "gpt-oss-120b", 200, cost_eur=0.25),
            UsageRecord(now - timedelta(days=30), "a", chat, "gpt-oss-120b", 200, cost_eur=9.0),
            UsageRecord(now, "b", "/v1/audio/transcriptions", "whisper-large-v3", 200, cost_eur=0.125),
        ]
    )
    assert spend.spend_by_key(spend.period_at("day", now)) == {"a": 0.5, "b": 0.125}
    assert spend.spend_by_key(spend.period_at("month", now)) == {"a": 0.75, "b": 0.125}
    assert spend.total_spend(spend.period_at("week", now)) == pytest.approx(0.875)
    assert spend.period_at("day", now).first_day == date(2026, 11, 25)


def test_global_settings_round_trip_and_clear(db_path):
    assert spend.load_global() == spend.GlobalSpend()
    spend.save_global(spend.GlobalSpend(budget_eur=250.0, budget_period="week", tpm=100_000))
    assert spend.load_global() == spend.GlobalSpend(250.0, "week", 100_000)
    spend.save_global(spend.GlobalSpend(budget_eur=None, budget_period="month", tpm=None))
    assert spend.load_global() == spend.GlobalSpend()
    with pytest.raises(ValueError, match="global budget"):
        spend.save_global(spend.GlobalSpend(budget_eur=-1))
    with pytest.raises(ValueError, match="budget period"):
        spend.save_global(spend.GlobalSpend(budget_period="year"))
