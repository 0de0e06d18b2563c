"""storage.key_history: one key's usage from the rollup, the gateway's refusals apart from the
upstream's errors, and each key's spend in its budget period."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest

from storage import key_history, keys, spend, usage
from storage.usage import UsageRecord

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)  # a Wednesday
TODAY, YESTERDAY = NOW.date(), NOW.date() - timedelta(days=1)
CHAT = "/v1/chat/completions"


def row(key_id, status=200, model="gpt-oss-120b", ts=NOW, cost=0.0, tokens=0):
    return UsageRecord(ts, key_id, CHAT, model, status, tokens, 0, 0, tokens, cost_eur=cost)


def test_one_keys_summary_totals_and_rows(db_path):
    usage.record_batch([
        row("a", cost=1.0, tokens=10),
        row("a", model="gemma-3-27b", cost=3.0, tokens=5),
        row("a", ts=NOW - timedelta(days=1), cost=0.5, tokens=1),
        row("a", ts=NOW - timedelta(days=40), cost=9.0),
        row("b", cost=100.0),
    ])
    days = key_history.summary(YESTERDAY, TODAY, "a", by="day")
    assert [(r["day"], r["requests"], r["cost_eur"]) for r in days] == [(YESTERDAY, 1, 0.5), (TODAY, 2, 4.0)]
    by_model = key_history.summary(YESTERDAY, TODAY, "a", by="model")
    assert [(r["model"], r["total_tokens"]) for r in by_model] == [("gemma-3-27b", 5), ("gpt-oss-120b", 11)]
    totals = key_history.totals(YESTERDAY, TODAY, "a")
    assert (totals["requests"], totals["cost_eur"]) == (3, 4.5)
    # The shape of storage.usage's summaries: floats for euros even when no row matched.
    assert key_history.totals(TODAY, TODAY, "nobody") == usage.totals(date(2000, 1, 1), date(2000, 1, 1))
    daily = key_history.daily_rows(None, None, "a")
    assert [(r["day"], r["model"]) for r in daily] == [
        (TODAY - timedelta(days=40), "gpt-oss-120b"), (YESTERDAY, "gpt-oss-120b"),
        (TODAY, "gemma-3-27b"), (TODAY, "gpt-oss-120b"),
    ]
    with pytest.raises(ValueError, match="by: must be one of day, model"):
        key_history.summary(TODAY, TODAY, "a", by="key")


def test_refusals_are_the_rows_the_gateway_answered_itself(db_path):
    refused = [
        dataclasses.replace(row("a", 429), refused=True),
        dataclasses.replace(row("a", 429, model=""), refused=True),
        dataclasses.replace(row("a", 403, model="gemma-3-27b"), refused=True),
        dataclasses.replace(row("a", 400), refused=True),  # a body the gateway would not read
        dataclasses.replace(row("a", 429, ts=NOW - timedelta(days=1)), refused=True),
        dataclasses.replace(row("b", 429), refused=True),
    ]
    # The upstream's own 429 (its quota) and 403 are errors, not refusals.
    upstream = [row("a", 429), row("a", 403), row("a", 500), row("a", 200), row("b", 503)]
    usage.record_batch(refused + upstream)
    counts = key_history.refused(YESTERDAY, TODAY)
    assert counts == {
        (TODAY, "a", "gpt-oss-120b"): 2, (TODAY, "a", ""): 1, (TODAY, "a", "gemma-3-27b"): 1,
        (YESTERDAY, "a", "gpt-oss-120b"): 1, (TODAY, "b", "gpt-oss-120b"): 1,
    }
    assert key_history.refused_by(counts, "key") == {"a": 5, "b": 1}
    assert key_history.refused_by(counts, "day") == {TODAY: 5, YESTERDAY: 1}
    assert key_history.refused(TODAY, TODAY, "b") == {(TODAY, "b", "gpt-oss-120b"): 1}
    today = key_history.refused_by(key_history.refused(TODAY, TODAY), "key")
    rows = key_history.add_refused(usage.summary(TODAY, TODAY, by="key"), today, "key_id")
    assert sorted((r["key_id"], r["errors"], r["refused"], r["upstream_errors"]) for r in rows) == [
        ("a", 7, 4, 3), ("b", 2, 1, 1),
    ]


def test_spend_this_period_of_each_key(db_path):
    weekly, _ = keys.create_key("weekly", budget_eur=5.0, budget_period="week")
    daily, _ = keys.create_key("daily", budget_eur=5.0, budget_period="day")
    plain, _ = keys.create_key("plain")
    monday = datetime(2026, 11, 23, 9, tzinfo=UTC)
    usage.record_batch([
        row(key.key_id, ts=ts, cost=cost)
        for key in (weekly, daily, plain)
        for ts, cost in ((NOW, 1.0), (monday, 2.0), (datetime(2026, 11, 2, tzinfo=UTC), 4.0))
    ])
    found = key_history.spend_this_period([weekly, daily, plain], NOW)
    assert {key_id: (period.name, eur) for key_id, (period, eur) in found.items()} == {
        weekly.key_id: ("week", 3.0), daily.key_id: ("day", 1.0), plain.key_id: ("month", 7.0),
    }
    assert found[weekly.key_id][0] == spend.period_at("week", NOW)
