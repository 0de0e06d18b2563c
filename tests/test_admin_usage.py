"""admin.views.usage, admin.periods and admin.charts: the usage tab, its chart and CSV export."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta

import pytest

from admin import charts, formatting, periods
from storage import keys, usage
from storage.models import utcnow
from storage.usage import UsageRecord

pytest_plugins = ("tests.admin_fixtures",)

CHAT = "/v1/chat/completions"


def record(key_id, ts, model="gpt-oss-120b", status=200, prompt=100, completion=50, cost=0.00075, **more):
    return UsageRecord(ts, key_id, CHAT, model, status, prompt, completion, 0, prompt + completion,
                       cost_eur=cost, **more)


@pytest.fixture
def data(app):
    """Two keys, two models, today and 10 days ago, one error, and a deleted key."""
    alice, _ = keys.create_key("alice")
    bob, _ = keys.create_key("=HYPERLINK(\"http://x\")")
    gone, _ = keys.create_key("gone")
    now = utcnow()
    usage.record_batch([
        record(alice.key_id, now),
        record(alice.key_id, now, status=502, prompt=0, completion=0, cost=0.0),
        record(alice.key_id, now - timedelta(days=10), model="gemma-3-27b", cost=2.5),
        record(bob.key_id, now, model="whisper-large-v3", prompt=0, completion=0, cost=0.0096,
               audio_seconds=90.0, request_bytes=102400),
        record(gone.key_id, now - timedelta(days=40), cost=100.0),
    ])
    keys.delete(gone.key_id)
    return {"alice": alice, "bob": bob, "gone": gone, "today": now.date()}


def test_usage_page_for_the_last_30_days(client, logged_in, data):
    html = client.get("/admin/usage").text
    assert 'id="total-spend">€2.51' in html  # 0.00075 + 2.5 + 0.0096
    assert 'id="total-requests">4<' in html
    assert 'id="total-errors">1<' in html
    assert "25.0% of requests" in html
    by_key = re.search(r'<table class="table" id="by-key">.*?</table>', html, re.S).group(0)
    by_model = re.search(r'<table class="table" id="by-model">.*?</table>', html, re.S).group(0)
    assert "alice" in by_key and data["alice"].key_id in by_key
    assert data["gone"].key_id not in by_key, "40 days ago is outside the period"
    assert "gemma-3-27b" in by_model and "whisper-large-v3" in by_model
    assert "1.5 min" in by_model, "audio minutes"
    assert html.count('<rect class="bar"') == 60, "30 days in two charts"


def test_today_only(client, logged_in, data):
    html = client.get("/admin/usage?period=today").text
    assert 'id="total-spend">€0.0103<' in html
    assert 'id="total-requests">3<' in html
    assert "gemma-3-27b" not in html
    assert 'class="active" aria-current="true">Today<' in html


def test_custom_range_includes_deleted_keys(client, logged_in, data):
    start = (data["today"] - timedelta(days=45)).isoformat()
    html = client.get(f"/admin/usage?period=custom&start={start}&end={data['today'].isoformat()}").text
    assert 'id="total-spend">€102.51' in html
    assert "deleted key" in html and data["gone"].key_id in html
    assert f'value="{start}"' in html


def test_bad_custom_range_falls_back_with_a_message(client, logged_in, data):
    html = client.get("/admin/usage?period=custom&start=2026-05-10&end=2026-05-01").text
    assert "the end date is before the start date" in html
    assert "Last 30 days" in html


def test_empty_period(client, logged_in):
    html = client.get("/admin/usage").text
    assert 'id="total-spend">€0.00<' in html and "No requests in this period" in html


def test_csv_export_has_a_row_per_key_model_and_day(client, logged_in, data):
    r = client.get("/admin/usage.csv?period=30d")
    assert r.status_code == 200
    assert r.mimetype == "text/csv"
    first = data["today"] - timedelta(days=29)
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="usage_{first.isoformat()}_{data["today"].isoformat()}.csv"')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["key_name"], row["model"], row["day"]) for row in rows] == sorted(
        [
            ("alice", "gpt-oss-120b", data["today"].isoformat()),
            ("alice", "gemma-3-27b", (data["today"] - timedelta(days=10)).isoformat()),
            ("'=HYPERLINK(\"http://x\")", "whisper-large-v3", data["today"].isoformat()),
        ],
        key=lambda t: (t[2], data["alice"].key_id if t[0] == "alice" else data["bob"].key_id, t[1]),
    )
    alice_today = next(row for row in rows if row["model"] == "gpt-oss-120b")
    assert (alice_today["requests"], alice_today["errors"], alice_today["total_tokens"]) == ("2", "1", "150")
    assert alice_today["refused"] == "0", "a 502 is the upstream's"
    assert float(alice_today["cost_eur"]) == pytest.approx(0.00075)
    assert sum(float(row["cost_eur"]) for row in rows) == pytest.approx(2.51035)


def test_csv_follows_the_period_shown(client, logged_in, data):
    html = client.get("/admin/usage?period=today").text
    link = re.search(r'href="(/admin/usage\.csv[^"]*)"', html).group(1).replace("&amp;", "&")
    assert link == "/admin/usage.csv?period=today"
    rows = list(csv.DictReader(io.StringIO(client.get(link).text)))
    assert {row["day"] for row in rows} == {data["today"].isoformat()}


TODAY = date(2026, 3, 14)


@pytest.mark.parametrize(
    "args, start, end",
    [
        ({}, date(2026, 2, 13), TODAY),
        ({"period": "today"}, TODAY, TODAY),
        ({"period": "7d"}, date(2026, 3, 8), TODAY),
        ({"period": "30d"}, date(2026, 2, 13), TODAY),
        ({"period": "month"}, date(2026, 3, 1), date(2026, 3, 31)),
        ({"period": "custom", "start": "2026-01-01", "end": "2026-01-02"}, date(2026, 1, 1),
         date(2026, 1, 2)),
    ],
)
def test_periods(args, start, end):
    period = periods.resolve(args, TODAY)
    assert (period.start, period.end) == (start, end)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"period": "year"}, "Unknown period"),
        ({"period": "custom", "start": "2026-01-01"}, "enter both dates"),
        ({"period": "custom", "start": "2026-02-01", "end": "2026-01-01"}, "before the start"),
        ({"period": "custom", "start": "2020-01-01", "end": "2026-01-01"}, "at most"),
    ],
)
def test_bad_periods(args, message):
    with pytest.raises(ValueError, match=message):
        periods.resolve(args, TODAY)


@pytest.mark.parametrize("top, step", [(0, 1), (4, 1), (10, 2.5), (0.000145, 0.00005), (1234, 500), (99, 25)])
def test_nice_step(top, step):
    assert charts.nice_step(top) == pytest.approx(step)


def test_bar_chart_svg():
    points = [(date(2026, 3, d), float(d)) for d in range(1, 11)]
    svg = str(charts.bar_chart(points, "Spend <per> day", formatting.eur, "spend"))
    assert svg.startswith('<svg class="chart spend"') and svg.endswith("</svg>")
    assert svg.count('<rect class="bar"') == 10
    assert "<title>2026-03-10: €10.00</title>" in svg
    assert "Spend &lt;per&gt; day" in svg
    assert "style=" not in svg


def test_bar_chart_of_nothing():
    svg = str(charts.bar_chart([(date(2026, 3, 1), 0)], "Empty", formatting.count))
    assert svg.count('<rect class="bar"') == 1 and 'height="0.0"' in svg


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "€0.00"), (0.000145, "€0.000145"), (0.005, "€0.005"), (0.01035, "€0.0103"), (0.5, "€0.5000"),
        (1e-9, "<€0.000001"), (1234.5, "€1,234.50"), (None, "—"),
    ],
)
def test_euro_format(value, text):
    assert formatting.eur(value) == text


def test_times_are_shown_in_utc():
    assert formatting.when(datetime(2026, 3, 14, 23, 30, tzinfo=UTC)) == "2026-03-14 23:30"


@pytest.fixture
def refusals(app):
    """One key's answers today: refused by the gateway itself (429, 403, 413, nothing forwarded)
    and the upstream's errors (its own 429 and 401; a 502)."""
    key, _ = keys.create_key("limited")
    other, _ = keys.create_key("other")
    now = utcnow()
    refused = {"prompt": 0, "completion": 0, "cost": 0.0, "refused": True}
    usage.record_batch([
        record(key.key_id, now),
        record(key.key_id, now, model="", status=429, **refused),
        record(key.key_id, now, status=429, **refused),
        record(key.key_id, now, model="gemma-3-27b", status=403, **refused),
        record(key.key_id, now, model="gemma-3-27b", status=413, **refused),
        record(key.key_id, now, status=401, prompt=0, completion=0, cost=0.0),
        record(other.key_id, now, status=502, prompt=0, completion=0, cost=0.0),
        record(other.key_id, now, status=429, prompt=0, completion=0, cost=0.0),
    ])
    return {"key": key, "other": other, "today": now.date()}


def cells(table: str, first: str) -> list[str]:
    """The figures of the row whose first cell holds `first`: requests, refused, upstream errors, ..."""
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", table, re.S) if first in r.split("</td>")[0])
    return re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)


def test_refusals_are_apart_from_upstream_errors(client, logged_in, refusals):
    html = client.get("/admin/usage?period=today").text
    assert 'id="total-requests">8<' in html
    assert 'id="total-refused">4<' in html and 'id="total-errors">3<' in html
    assert "37.5% of requests" in html, "upstream errors only"
    by_key = re.search(r'<table class="table" id="by-key">.*?</table>', html, re.S).group(0)
    assert cells(by_key, "limited")[:3] == ["6", "4", "1"]
    assert cells(by_key, "other")[:3] == ["2", "0", "2"], "the upstream's own 429 is an error"
    by_model = re.search(r'<table class="table" id="by-model">.*?</table>', html, re.S).group(0)
    assert cells(by_model, "gemma-3-27b")[:3] == ["2", "2", "0"]
    assert cells(by_model, "gpt-oss-120b")[:3] == ["5", "1", "3"]
    assert cells(by_model, "—")[:3] == ["1", "1", "0"], "a refusal before the model was read"
    assert "nothing was forwarded" in html, "the page says what a refusal is"


def test_filter_by_key(client, logged_in, refusals):
    key = refusals["key"]
    html = client.get(f"/admin/usage?period=today&key={key.key_id}").text
    assert 'id="total-requests">6<' in html and 'id="total-spend">€0.00075<' in html
    assert 'id="total-refused">4<' in html and 'id="total-errors">1<' in html
    assert 'id="by-key"' not in html and 'id="key-filter-note"' in html
    assert f'<option value="{key.key_id}" selected>limited ({key.key_id})</option>' in html
    assert f'href="/admin/keys/{key.key_id}"' in html
    # The period links, the custom range and the export keep the key.
    assert f'href="/admin/usage?period=7d&amp;key={key.key_id}"' in html
    assert f'<input type="hidden" name="key" value="{key.key_id}">' in html
    link = re.search(r'href="(/admin/usage\.csv[^"]*)"', html).group(1).replace("&amp;", "&")
    rows = list(csv.DictReader(io.StringIO(client.get(link).text)))
    assert {row["key_id"] for row in rows} == {key.key_id}
    assert sorted((row["model"], row["requests"], row["errors"], row["refused"]) for row in rows) == [
        ("", "1", "1", "1"), ("gemma-3-27b", "2", "2", "2"), ("gpt-oss-120b", "3", "2", "1"),
    ]
    assert f"usage_{key.key_id}_" in client.get(link).headers["Content-Disposition"]


def test_the_by_key_table_links_to_the_filter(client, logged_in, refusals):
    html = client.get("/admin/usage?period=7d").text
    key_id = refusals["key"].key_id
    assert f'href="/admin/usage?key={key_id}&amp;period=7d" title="Show only this key"' in html


def test_filter_by_a_deleted_key(client, logged_in, data):
    gone = data["gone"].key_id
    start = (data["today"] - timedelta(days=45)).isoformat()
    html = client.get(f"/admin/usage?period=custom&start={start}&end={data['today']}&key={gone}").text
    assert 'id="total-spend">€100.00<' in html and "of a deleted key" in html
    assert f'<option value="{gone}" selected>deleted key ({gone})</option>' in html


@pytest.mark.parametrize("bad", ["key\x1b[2J", "k" * 201])
def test_a_bad_key_filter_shows_every_key(client, logged_in, data, bad):
    html = client.get("/admin/usage", query_string={"key": bad}).text
    assert "That is not a key id" in html and 'id="by-key"' in html
    assert 'id="total-requests">4<' in html


def test_a_key_name_is_escaped_in_the_filter(client, logged_in):
    keys.create_key("<script>alert(1)</script>")
    html = client.get("/admin/usage").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (key_" in html and "<script>alert" not in html
