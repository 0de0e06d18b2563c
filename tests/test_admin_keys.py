"""admin.views.keys: create (shown once), list, edit, revoke, enable, rotate and delete."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from admin import forms
from storage import audit, keys, keys_file, spend, usage
from storage.models import ApiKey, utcnow
from storage.usage import UsageRecord

pytest_plugins = ("tests.admin_fixtures",)

CHAT = "/v1/chat/completions"
KEY = re.compile(r"pmg_[A-Za-z0-9_-]{43}")


def created_key(response) -> str:
    found = set(KEY.findall(response.text))
    assert len(found) == 1, found
    return found.pop()


def test_create_shows_the_key_once(client, logged_in):
    r = logged_in.post("/admin/keys", {"name": "n8n production"})
    assert r.status_code == 200
    plaintext = created_key(r)
    assert "shown only this once" in r.text and 'data-copy="new-key"' in r.text
    [key] = keys.list_keys()
    assert (key.name, key.source, key.key_hash) == ("n8n production", "admin", keys.hash_key(plaintext))
    assert key.prefix == plaintext[:12]
    # Never again: not in the list, not on the key's page, not in the audit log.
    assert plaintext not in client.get("/admin/keys").text
    assert plaintext not in client.get(f"/admin/keys/{key.key_id}").text
    assert plaintext not in client.get("/admin/audit").text
    [entry] = [e for e in audit.recent() if e.action == "key.created"]
    assert key.key_id in entry.detail and plaintext not in entry.detail and key.prefix not in entry.detail


def test_create_with_expiry_and_rate_limit(client, logged_in):
    tomorrow = (utcnow() + timedelta(days=1)).date()
    r = logged_in.post("/admin/keys", {"name": "temp", "expires": tomorrow.isoformat(), "rate_limit": "7"})
    assert r.status_code == 200
    [key] = keys.list_keys()
    assert key.rate_limit == 7
    assert key.expires_at == datetime(tomorrow.year, tomorrow.month, tomorrow.day, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    "form, message",
    [
        ({"name": "  "}, "Name: must not be empty"),
        ({"name": "a\x1b[2Jb"}, "Name: must not contain control characters"),
        ({"name": "x" * 101}, "at most 100"),
        ({"name": "k", "rate_limit": "0"}, "Rate limit: enter a whole number"),
        ({"name": "k", "rate_limit": "ten"}, "Rate limit: enter a whole number"),
        ({"name": "k", "expires": "2020-01-01"}, "Valid until: 2020-01-01 23:59:59 UTC is already past"),
        ({"name": "k", "expires": "31.12.2030"}, "is not a date like 2026-12-31"),
    ],
)
def test_create_refuses_bad_input(client, logged_in, form, message):
    r = logged_in.post("/admin/keys", form)
    assert r.status_code == 400
    assert message in r.text
    assert keys.list_keys() == []
    assert not KEY.search(r.text)


def test_list_shows_status_dates_and_this_months_usage(client, logged_in):
    active, _ = keys.create_key("active one")
    revoked, _ = keys.create_key("revoked one", rate_limit=3)
    keys.revoke(revoked.key_id)
    expired, _ = keys.create_key("expired one", expires_at=utcnow() + timedelta(seconds=1))
    ApiKey.update(expires_at=utcnow() - timedelta(days=1)).where(ApiKey.key_id == expired.key_id).execute()
    now = utcnow()
    usage.record_batch([
        UsageRecord(now, active.key_id, CHAT, "gpt-oss-120b", 200, 10, 5, 0, 15, cost_eur=1.25),
        UsageRecord(now, active.key_id, CHAT, "gpt-oss-120b", 500, cost_eur=0.0),
    ])
    html = client.get("/admin/keys").text
    rows = dict(re.findall(r'<tr data-key-id="(key_\w+)">(.*?)</tr>', html, re.S))
    assert "badge-active" in rows[active.key_id] and "Revoke" in rows[active.key_id]
    assert "badge-revoked" in rows[revoked.key_id] and "Enable" in rows[revoked.key_id]
    assert "badge-expired" in rows[expired.key_id]
    assert active.prefix in rows[active.key_id]
    assert ">2<" in rows[active.key_id] and "€1.25" in rows[active.key_id]
    assert "this month, no budget" in rows[active.key_id]
    assert now.strftime("%Y-%m-%d %H:%M") in rows[active.key_id], "last used"
    assert "<div>3 req / 60 s</div>" in rows[revoked.key_id], "rate limit"
    assert "default</span> req / 60 s" in rows[active.key_id] and "all models" in rows[active.key_id]
    assert "No keys yet" not in html


def test_empty_list(client, logged_in):
    assert "No keys yet" in client.get("/admin/keys").text


def test_revoke_and_enable(client, logged_in):
    key, _ = keys.create_key("k")
    r = logged_in.post(f"/admin/keys/{key.key_id}/revoke")
    assert (r.status_code, r.headers["Location"]) == (302, "/admin/keys")
    assert keys.key_status(keys.get_key(key.key_id)) == "revoked"
    assert "Revoked k" in client.get("/admin/keys").text
    logged_in.post(f"/admin/keys/{key.key_id}/enable")
    assert keys.key_status(keys.get_key(key.key_id)) == "active"
    assert [e.action for e in audit.recent()][:2] == ["key.enabled", "key.revoked"]


def test_rotate_asks_first_then_shows_the_new_key_once(client, logged_in):
    key, old = keys.create_key("k", rate_limit=9)
    page = client.get(f"/admin/keys/{key.key_id}/rotate")
    assert page.status_code == 200 and "stops working" in page.text
    assert keys.get_key(key.key_id).key_hash == keys.hash_key(old), "asking changes nothing"
    r = logged_in.post(f"/admin/keys/{key.key_id}/rotate")
    new = created_key(r)
    assert new != old
    rotated = keys.get_key(key.key_id)
    assert rotated.key_hash == keys.hash_key(new) and rotated.rate_limit == 9
    assert "previous secret of this key has stopped working" in r.text
    assert r.headers["Cache-Control"] == "no-store"
    entry = audit.recent()[0]
    assert entry.action == "key.rotated" and new not in entry.detail and old not in entry.detail


def test_delete_asks_first(client, logged_in):
    key, _ = keys.create_key("doomed")
    page = client.get(f"/admin/keys/{key.key_id}/delete")
    assert page.status_code == 200 and "cannot be undone" in page.text
    assert keys.get_key(key.key_id)
    r = logged_in.post(f"/admin/keys/{key.key_id}/delete")
    assert r.status_code == 302
    assert keys.list_keys() == []
    assert audit.recent()[0].action == "key.deleted"


@pytest.mark.parametrize("action", ["", "/revoke", "/enable", "/rotate", "/delete"])
def test_unknown_key_is_404(client, logged_in, action):
    assert client.get("/admin/keys/key_000000000000" + action).status_code in (404, 405)
    assert logged_in.post("/admin/keys/key_000000000000" + action, {"name": "x"}).status_code == 404


def test_edit_rate_limit_expiry_and_name(client, logged_in):
    key, _ = keys.create_key("old name")
    page = client.get(f"/admin/keys/{key.key_id}")
    assert page.status_code == 200 and key.key_id in page.text
    day = (utcnow() + timedelta(days=30)).date()
    r = logged_in.post(f"/admin/keys/{key.key_id}", {"name": "new name", "rate_limit": "12",
                                                     "expires": day.isoformat()})
    assert r.status_code == 302
    edited = keys.get_key(key.key_id)
    assert (edited.name, edited.rate_limit, edited.expires_at.date()) == ("new name", 12, day)
    entry = audit.recent()[0]
    assert entry.action == "key.updated" and "rate_limit=12" in entry.detail
    # Empty fields clear the rate limit and the expiry.
    logged_in.post(f"/admin/keys/{key.key_id}", {"name": "new name", "rate_limit": "", "expires": ""})
    cleared = keys.get_key(key.key_id)
    assert (cleared.rate_limit, cleared.expires_at) == (None, None)


def test_edit_keeps_an_exact_expiry_when_its_date_is_unchanged(client, logged_in):
    exact = (utcnow() + timedelta(days=3)).replace(hour=9, minute=30, second=0, microsecond=0)
    key, _ = keys.create_key("cli key", expires_at=exact)
    r = logged_in.post(f"/admin/keys/{key.key_id}", {"name": "cli key", "rate_limit": "5",
                                                     "expires": exact.date().isoformat()})
    assert r.status_code == 302
    assert keys.get_key(key.key_id).expires_at == exact


def test_edit_without_changes(client, logged_in):
    key, _ = keys.create_key("same")
    r = logged_in.post(f"/admin/keys/{key.key_id}", {"name": "same", "rate_limit": "", "expires": ""})
    assert r.status_code == 302
    assert "Nothing changed" in client.get(r.headers["Location"]).text
    assert "key.updated" not in [e.action for e in audit.recent()]


def test_edit_refuses_bad_input(client, logged_in):
    key, _ = keys.create_key("k")
    r = logged_in.post(f"/admin/keys/{key.key_id}", {"name": "k", "rate_limit": "-4"})
    assert r.status_code == 400 and "Rate limit" in r.text
    assert keys.get_key(key.key_id).rate_limit is None


@pytest.mark.parametrize("text, expected", [("", None), (" 5 ", 5), ("100000", 100000)])
def test_rate_limit_parser(text, expected):
    assert forms.rate_limit(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "1e3", "x"])
def test_rate_limit_parser_refuses(text):
    with pytest.raises(ValueError, match="Rate limit"):
        forms.rate_limit(text)


def test_expiry_parser():
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert forms.expiry("", now) is None
    assert forms.expiry("2026-05-01", now) == datetime(2026, 5, 1, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(ValueError, match="already past"):
        forms.expiry("2026-04-30", now)


def test_keys_from_the_keys_file_are_marked(client, logged_in, tmp_path):
    path = tmp_path / "api_keys.json"
    path.write_text('{"keys": [{"key_id": "legacy", "api_key": "pm_legacy-0123456789"}]}')
    keys_file.sync(path)
    made_here, _ = keys.create_key("made here", source="admin")
    html = client.get("/admin/keys").text
    rows = dict(re.findall(r'<tr data-key-id="([\w]+)">(.*?)</tr>', html, re.S))
    assert 'class="tag tag-file"' in rows["legacy"] and "API_KEYS_FILE" in rows["legacy"]
    assert "tag-file" not in rows[made_here.key_id]
    path.write_text('{"keys": []}')
    keys_file.sync(path)
    html = client.get("/admin/keys").text
    rows = dict(re.findall(r'<tr data-key-id="([\w]+)">(.*?)</tr>', html, re.S))
    assert "Its entry has left the file" in rows["legacy"] and "badge-revoked" in rows["legacy"]


def key_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-key-id="(\w+)">(.*?)</tr>', html, re.S))


def fill(response) -> tuple[str, float]:
    """The level and the width of a spend bar in a piece of HTML."""
    level = re.search(r'<svg class="meter meter-(\w+)"', response).group(1)
    return level, float(re.search(r'<rect class="meter-fill" width="([\d.]+)"', response).group(1))


def test_create_with_budget_models_and_token_limit(client, logged_in):
    r = logged_in.post("/admin/keys", {
        "name": "limited", "budget": "12,50", "budget_period": "week", "tpm": "1000",
        "models": ["gpt-oss-120b"], "models_other": "gemma-3-27b, my-model gpt-oss-120b",
    })
    assert r.status_code == 200
    [key] = keys.list_keys()
    assert (key.budget_eur, key.budget_period, key.tpm) == (12.5, "week", 1000)
    assert keys.allowed_models(key) == ("gpt-oss-120b", "gemma-3-27b", "my-model")
    assert "€12.50 per week" in r.text and ">my-model<" in r.text
    [entry] = [e for e in audit.recent() if e.action == "key.created"]
    assert "budget_eur=12.5 budget_period='week'" in entry.detail and "tpm=1000" in entry.detail
    assert entry.detail.count("gemma-3-27b") == 1


def test_create_without_limits_stores_none(client, logged_in):
    # The form always sends a period: it means nothing without a budget, and is not stored.
    logged_in.post("/admin/keys", {"name": "open", "budget": "", "budget_period": "day", "tpm": "",
                                   "models_other": " "})
    [key] = keys.list_keys()
    assert (key.budget_eur, key.budget_period, key.models, key.tpm) == (None, None, None, None)


@pytest.mark.parametrize(
    "form, message",
    [
        ({"budget": "0"}, "Budget: a number of euros above 0"),
        ({"budget": "five"}, "Budget: enter a number of euros"),
        ({"budget": "nan"}, "Budget: a number of euros above 0"),
        ({"budget": "5", "budget_period": "year"}, "Budget period: one of day, week, month"),
        ({"tpm": "0"}, "Tokens per minute: tokens per minute, a whole number of at least 1"),
        ({"tpm": "1.5"}, "Tokens per minute: enter a whole number"),
        ({"models_other": "good, bad\x1bname"}, "Models: &#39;bad\\x1bname&#39; is not a model name"),
        ({"models_other": "x" * 257}, "is not a model name"),
    ],
)
def test_create_refuses_bad_limits_and_keeps_the_form(client, logged_in, form, message):
    r = logged_in.post("/admin/keys", {"name": "kept name", "models": ["ticked-model"], **form})
    assert r.status_code == 400
    assert message in r.text
    assert keys.list_keys() == []
    assert 'value="kept name"' in r.text
    # A ticked model stays ticked, even one the upstream does not list.
    assert re.search(r'value="ticked-model" checked>', r.text)


def test_list_shows_spend_against_each_budget_as_a_bar(client, logged_in):
    now = utcnow()
    week = spend.period_at("week", now)
    low, _ = keys.create_key("low", budget_eur=10.0, budget_period="week")
    high, _ = keys.create_key("high", budget_eur=10.0, budget_period="month")
    over, _ = keys.create_key("over", budget_eur=1.0, budget_period="day")
    free, _ = keys.create_key("free", tpm=5000, models=["gpt-oss-120b", "gemma-3-27b"])
    usage.record_batch([
        UsageRecord(now, low.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=2.5),
        # Last week: not part of this week's budget.
        UsageRecord(week.start - timedelta(hours=1), low.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=50.0),
        UsageRecord(now, high.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=9.0),
        UsageRecord(now, over.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=1.5),
        UsageRecord(now, free.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=0.5),
    ])
    rows = key_rows(client.get("/admin/keys").text)
    assert fill(rows[low.key_id]) == ("ok", 25.0)
    assert "€2.50</span> of €10.00 <span class=\"muted\">this week" in rows[low.key_id]
    assert fill(rows[high.key_id]) == ("warn", 90.0)
    assert fill(rows[over.key_id]) == ("over", 100.0)
    assert 'tag-bad">spent<' in rows[over.key_id] and "spent<" not in rows[high.key_id]
    assert "<svg" not in rows[free.key_id] and "this month, no budget" in rows[free.key_id]
    assert "5,000 tokens / min" in rows[free.key_id]
    assert 'title="gpt-oss-120b, gemma-3-27b">2 models<' in rows[free.key_id]
    # The bar is sized by an attribute: the CSP allows no style attribute.
    assert "style=" not in rows[low.key_id]


def test_a_small_spend_shows_a_sliver(client, logged_in):
    key, _ = keys.create_key("k", budget_eur=100.0)
    usage.record_batch([UsageRecord(utcnow(), key.key_id, CHAT, "m", 200, cost_eur=0.000145)])
    assert fill(key_rows(client.get("/admin/keys").text)[key.key_id]) == ("ok", 1.5)


def test_key_page_shows_limits_and_history_by_day_and_model(client, logged_in):
    now = utcnow()
    key, _ = keys.create_key("worker", budget_eur=4.0, budget_period="week", tpm=2500,
                             models=["gpt-oss-120b", "<b>odd</b>"])
    other, _ = keys.create_key("other")
    earlier = now - timedelta(days=3)
    usage.record_batch([
        UsageRecord(now, key.key_id, CHAT, "gpt-oss-120b", 200, 10, 5, 0, 15, cost_eur=1.0),
        UsageRecord(now, key.key_id, CHAT, "", 429, refused=True),
        UsageRecord(now, key.key_id, CHAT, "gemma-3-27b", 403, refused=True),
        UsageRecord(earlier, key.key_id, CHAT, "gpt-oss-120b", 502),
        UsageRecord(earlier, key.key_id, CHAT, "gpt-oss-120b", 200, 100, 50, 0, 150, cost_eur=0.25),
        UsageRecord(now, other.key_id, CHAT, "gpt-oss-120b", 200, cost_eur=7.0),
    ])
    html = client.get(f"/admin/keys/{key.key_id}").text
    limits = re.search(r'<section class="card" id="key-limits">.*?</section>', html, re.S).group(0)
    spent_this_week = 1.0 + (0.25 if earlier >= spend.period_at("week", now).start else 0)
    assert f'id="budget-spent">€{spent_this_week:.2f}</span> of €4.00 spent this week' in limits
    assert "2,500" in limits and "<span class=\"tag\">gpt-oss-120b</span>" in limits
    assert "&lt;b&gt;odd&lt;/b&gt;" in limits and "<b>odd</b>" not in html
    history = html[html.index('id="history"'):]
    assert 'id="total-requests">5<' in history and 'id="total-spend">€1.25<' in history
    assert 'id="total-refused">2<' in history and 'id="total-errors">1<' in history
    by_day = re.search(r'<table class="table" id="by-day">.*?</table>', history, re.S).group(0)
    days = re.findall(r'<td class="nowrap">(\d{4}-\d\d-\d\d)</td>', by_day)
    assert days == [now.date().isoformat(), earlier.date().isoformat()], "newest first"
    today_row = by_day[by_day.index(now.date().isoformat()):by_day.index(earlier.date().isoformat())]
    assert re.findall(r'<td class="num[^"]*">([^<]*)</td>', today_row)[:3] == ["3", "2", "0"]
    by_model = re.search(r'<table class="table" id="by-model">.*?</table>', history, re.S).group(0)
    assert "gemma-3-27b" in by_model and "€7.00" not in history, "another key's usage stays out"
    assert history.count('<rect class="bar"') == 60, "30 days, spend and tokens"
    today = client.get(f"/admin/keys/{key.key_id}?period=today").text
    assert 'id="total-requests">3<' in today[today.index('id="history"'):]


def test_key_page_with_a_bad_period_falls_back(client, logged_in):
    key, _ = keys.create_key("k")
    html = client.get(f"/admin/keys/{key.key_id}?period=custom&start=2026-02-01&end=2026-01-01").text
    assert "the end date is before the start date" in html and "Last 30 days" in html


def test_edit_budget_models_and_token_limit(client, logged_in):
    key, _ = keys.create_key("k", models=["kept-model"])
    page = client.get(f"/admin/keys/{key.key_id}").text
    # The key's own model is offered ticked although the upstream (down here) lists none.
    assert re.search(r'value="kept-model" checked> <span class="mono">kept-model</span> '
                     r'<span class="muted small">\(not listed by the upstream\)', page)
    assert 'id="models-unavailable"' in page
    r = logged_in.post(f"/admin/keys/{key.key_id}", {
        "name": "k", "budget": "3", "budget_period": "day", "tpm": "900", "models": ["kept-model"],
        "models_other": "gpt-oss-120b",
    })
    assert (r.status_code, r.headers["Location"]) == (302, f"/admin/keys/{key.key_id}")
    edited = keys.get_key(key.key_id)
    assert (edited.budget_eur, edited.budget_period, edited.tpm) == (3.0, "day", 900)
    assert keys.allowed_models(edited) == ("kept-model", "gpt-oss-120b")
    entry = audit.recent()[0]
    assert entry.action == "key.updated" and entry.client_addr == "127.0.0.1"
    assert "budget_eur=3.0 budget_period='day'" in entry.detail and "tpm=900" in entry.detail
    assert "name=" not in entry.detail, "only what changed"
    shown = client.get(r.headers["Location"]).text
    assert ("Saved k: budget €3.00 per day, models kept-model, gpt-oss-120b, tokens per minute 900."
            in shown)
    # Empty fields clear them all: no budget (nor its period), every model, no token limit.
    logged_in.post(f"/admin/keys/{key.key_id}", {"name": "k", "budget": "", "budget_period": "day",
                                                 "tpm": "", "models_other": ""})
    cleared = keys.get_key(key.key_id)
    assert (cleared.budget_eur, cleared.budget_period, cleared.models, cleared.tpm) == (None,) * 4
    assert "budget_eur=none budget_period=none models=none tpm=none" in audit.recent()[0].detail


def test_edit_refuses_a_bad_budget_and_changes_nothing(client, logged_in):
    key, _ = keys.create_key("k", budget_eur=5.0)
    r = logged_in.post(f"/admin/keys/{key.key_id}", {"name": "renamed", "budget": "-1", "tpm": "10"})
    assert r.status_code == 400 and "Budget: a number of euros above 0" in r.text
    assert 'value="renamed"' in r.text and 'id="history"' in r.text
    unchanged = keys.get_key(key.key_id)
    assert (unchanged.name, unchanged.budget_eur, unchanged.tpm) == ("k", 5.0, None)
    assert "key.updated" not in [e.action for e in audit.recent()]


def test_edit_a_budgets_period_alone(client, logged_in):
    key, _ = keys.create_key("k", budget_eur=5.0, budget_period="month")
    logged_in.post(f"/admin/keys/{key.key_id}", {"name": "k", "budget": "5", "budget_period": "week"})
    assert keys.get_key(key.key_id).budget_period == "week"
    assert audit.recent()[0].detail == f"key_id={key.key_id} budget_period='week'"


@pytest.mark.parametrize(
    "text, expected", [("", None), (" 7 ", 7.0), ("2,5", 2.5), ("0.0001", 0.0001)],
)
def test_budget_parser(text, expected):
    assert forms.budget(text) == expected


@pytest.mark.parametrize(
    "ticked, typed, expected",
    [
        ([], "", None),
        (["a"], "", ["a"]),
        (["a", " "], "b,c  d,,a", ["a", "b", "c", "d"]),
        ([], " , ", None),
    ],
)
def test_models_parser(ticked, typed, expected):
    assert forms.models(ticked, typed) == expected
