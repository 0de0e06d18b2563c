"""storage.usage: batches, the daily rollup, last_used_at, and the summary queries."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import keys, usage
from storage.db import database, revision
from storage.models import DailyUsage, Usage
from storage.usage import UsageRecord

DAY = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
CHAT = "/v1/chat/completions"


def chat(key_id, ts=DAY, model="gpt-oss-120b", status=200, prompt=21, completion=8, cached=0, **more):
    return UsageRecord(
        ts=ts,
        key_id=key_id,
        endpoint=CHAT,
        model=model,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        total_tokens=prompt + completion,
        cost_eur=(prompt + completion) * 5 / 1e6,
        **more,
    )


def test_record_batch_writes_rows_rollup_and_last_used(db_path):
    key, _ = keys.create_key("k")
    start = revision()
    usage.record_batch(
        [
            chat(key.key_id, ts=DAY, duration_ms=120, streamed=True),
            chat(key.key_id, ts=DAY + timedelta(minutes=5), status=429, prompt=0, completion=0),
            chat(
                key.key_id, ts=DAY + timedelta(minutes=1), status=502, prompt=0, completion=0, complete=False
            ),
        ]
    )
    rows = list(Usage.select().order_by(Usage.id))
    assert len(rows) == 3
    assert (rows[0].ts, rows[0].duration_ms, rows[0].streamed, rows[0].complete) == (DAY, 120, True, True)
    assert rows[2].complete is False
    (daily,) = DailyUsage.select()
    assert (daily.day, daily.key_id, daily.model) == (DAY.date(), key.key_id, "gpt-oss-120b")
    assert (daily.requests, daily.errors, daily.prompt_tokens, daily.completion_tokens) == (3, 2, 21, 8)
    assert daily.cost_eur == pytest.approx(29 * 5 / 1e6)
    assert keys.get_key(key.key_id).last_used_at == DAY + timedelta(minutes=5)
    # Usage is not a change the gateway must reload for.
    assert revision() == start


def test_batches_add_up_and_last_used_never_goes_back(db_path):
    key, _ = keys.create_key("k")
    later = DAY + timedelta(hours=1)
    usage.record_batch([chat(key.key_id, ts=later, cached=5)])
    usage.record_batch([chat(key.key_id, ts=DAY, cached=5), chat("key_gone", ts=DAY)])
    rows = {(r.key_id, r.model): r for r in DailyUsage.select()}
    mine = rows[(key.key_id, "gpt-oss-120b")]
    assert (mine.requests, mine.prompt_tokens, mine.cached_tokens, mine.total_tokens) == (2, 42, 10, 58)
    assert rows[("key_gone", "gpt-oss-120b")].requests == 1
    assert keys.get_key(key.key_id).last_used_at == later


def test_the_day_is_the_utc_date(db_path):
    late_evening_in_brazil = datetime(2026, 3, 14, 23, 30, tzinfo=timezone(timedelta(hours=-3)))
    usage.record_batch([chat("key_a", ts=late_evening_in_brazil)])
    assert DailyUsage.get().day == date(2026, 3, 15)


def test_missing_model_is_stored_as_empty(db_path):
    usage.record_batch([UsageRecord(DAY, "key_a", "/v1/models", None, 401)])
    assert (DailyUsage.get().model, DailyUsage.get().errors) == ("", 1)


def test_naive_timestamps_are_refused_before_writing(db_path):
    with pytest.raises(ValueError, match="aware"):
        usage.record_batch([chat("key_a"), chat("key_a", ts=datetime(2026, 3, 14))])
    assert Usage.select().count() == 0


def test_record_batch_is_one_transaction(db_path):
    key, _ = keys.create_key("k")
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "CREATE TRIGGER fail_rollup BEFORE INSERT ON daily_usage BEGIN SELECT RAISE(ABORT, 'full'); END"
        )
    conn.close()
    with pytest.raises(Exception, match="full"):
        usage.record_batch([chat(key.key_id)])
    assert Usage.select().count() == 0
    assert keys.get_key(key.key_id).last_used_at is None


def test_empty_batch(db_path):
    usage.record_batch([])
    assert Usage.select().count() == 0


@pytest.fixture
def month(db_path):
    """Two keys, two models, three days; one key deleted afterwards."""
    alice, _ = keys.create_key("alice")
    bob, _ = keys.create_key("bob")
    gone, _ = keys.create_key("gone")
    d1, d2, d3 = DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)
    usage.record_batch(
        [
            chat(alice.key_id, ts=d1),
            chat(alice.key_id, ts=d2, model="gemma-3-27b", prompt=100, completion=100),
            chat(bob.key_id, ts=d2, status=500, prompt=0, completion=0),
            chat(bob.key_id, ts=d3),
            chat(gone.key_id, ts=d3, prompt=1000, completion=0),
            UsageRecord(
                d3,
                bob.key_id,
                "/v1/audio/transcriptions",
                "whisper-large-v3",
                200,
                audio_seconds=35.5,
                request_bytes=1_000_000,
                cost_eur=0.1,
            ),
        ]
    )
    keys.delete(gone.key_id)
    return alice.key_id, bob.key_id, gone.key_id


def test_summary_by_key(month):
    alice, bob, gone = month
    rows = usage.summary(None, None, by="key")
    assert [(r["key_id"], r["name"]) for r in rows] == [(bob, "bob"), (gone, None), (alice, "alice")]
    by_id = {r["key_id"]: r for r in rows}
    assert by_id[alice]["requests"] == 2 and by_id[alice]["total_tokens"] == 229
    assert (by_id[bob]["requests"], by_id[bob]["errors"], by_id[bob]["audio_seconds"]) == (3, 1, 35.5)
    assert by_id[bob]["request_bytes"] == 1_000_000
    assert by_id[gone]["cost_eur"] == pytest.approx(1000 * 5 / 1e6)
    assert list(rows[0])[:2] == ["key_id", "name"]


def test_summary_by_model_and_day_with_inclusive_range(month):
    d2, d3 = DAY.date() + timedelta(days=1), DAY.date() + timedelta(days=2)
    models = usage.summary(d2, d3, by="model")
    assert {r["model"]: r["requests"] for r in models} == {
        "gpt-oss-120b": 3,
        "gemma-3-27b": 1,
        "whisper-large-v3": 1,
    }
    days = usage.summary(None, d2, by="day")
    assert [(r["day"], r["requests"], r["errors"]) for r in days] == [(DAY.date(), 1, 0), (d2, 2, 1)]
    with pytest.raises(ValueError, match="by"):
        usage.summary(None, None, by="hour")


def test_totals(month):
    total = usage.totals(None, None)
    assert (total["requests"], total["errors"], total["prompt_tokens"]) == (6, 1, 1142)
    assert total["cost_eur"] == pytest.approx((29 + 200 + 29 + 1000) * 5 / 1e6 + 0.1)
    empty = usage.totals(date(2000, 1, 1), date(2000, 1, 31))
    assert empty["requests"] == 0 and empty["cost_eur"] == 0.0 and isinstance(empty["cost_eur"], float)


def test_daily_rows(month):
    alice, bob, gone = month
    rows = usage.daily_rows(DAY.date(), DAY.date() + timedelta(days=1))
    assert [(r["day"], r["key_id"], r["model"], r["name"]) for r in rows] == sorted(
        [
            (DAY.date(), alice, "gpt-oss-120b", "alice"),
            (DAY.date() + timedelta(days=1), alice, "gemma-3-27b", "alice"),
            (DAY.date() + timedelta(days=1), bob, "gpt-oss-120b", "bob"),
        ]
    )


def test_queries_read_the_rollup_only(month):
    before = usage.summary(None, None, by="model")
    # Raw rows may be pruned; the figures people see come from the rollup.
    Usage.delete().execute()
    assert usage.summary(None, None, by="model") == before


def test_month_by_key(month):
    alice, bob, gone = month
    result = usage.month_by_key(DAY)
    assert result[alice] == (2, pytest.approx(229 * 5 / 1e6))
    assert result[bob][0] == 3
    assert usage.month_by_key(DAY + timedelta(days=40)) == {}


@pytest.mark.parametrize(
    ("now", "first", "last"),
    [
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), date(2026, 12, 1), date(2026, 12, 31)),
        (datetime(2028, 2, 10, tzinfo=UTC), date(2028, 2, 1), date(2028, 2, 29)),
        # 00:30 on 1 March in Berlin is still February in UTC.
        (
            datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            date(2026, 2, 1),
            date(2026, 2, 28),
        ),
    ],
)
def test_month_bounds(now, first, last):
    assert usage.month_bounds(now) == (first, last)


records = st.builds(
    UsageRecord,
    ts=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 1, 4), timezones=st.just(UTC)),
    key_id=st.sampled_from(["key_a", "key_b"]),
    endpoint=st.just(CHAT),
    model=st.sampled_from(["m1", "m2", ""]),
    status=st.sampled_from([200, 400, 429, 500]),
    prompt_tokens=st.integers(0, 10_000),
    completion_tokens=st.integers(0, 10_000),
    cached_tokens=st.integers(0, 100),
    cost_eur=st.floats(0, 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(records, max_size=20), max_size=4))
def test_rollup_always_matches_the_raw_rows(db_path, batches):
    for batch in batches:
        usage.record_batch(batch)
    # The invariant holds however many examples ran before on the same database.
    raw = database.execute_sql(
        "SELECT date(ts), key_id, model, count(*), sum(status >= 400), sum(prompt_tokens),"
        " sum(completion_tokens), sum(cached_tokens), sum(cost_eur)"
        " FROM usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    rollup = database.execute_sql(
        "SELECT day, key_id, model, requests, errors, prompt_tokens, completion_tokens, cached_tokens,"
        " cost_eur FROM daily_usage ORDER BY 1, 2, 3"
    ).fetchall()
    assert [row[:8] for row in rollup] == [row[:8] for row in raw]
    assert [row[8] for row in rollup] == pytest.approx([row[8] for row in raw])


def test_a_batch_costs_the_same_whatever_the_size_of_the_usage_table(db_path):
    # No statement of record_batch may read the whole usage table or one of its indexes.
    from storage.db import database
    from storage.usage import _LAST_USED, _ROLL_UP

    plans = [
        database.execute_sql("EXPLAIN QUERY PLAN " + _ROLL_UP, (0,)).fetchall(),
        database.execute_sql("EXPLAIN QUERY PLAN " + _LAST_USED, ("x", "k", "x")).fetchall(),
    ]
    details = [step[3] for plan in plans for step in plan]
    assert not [d for d in details if d.startswith("SCAN") and "usage" in d], details
