"""admin.views.keys: create (shown once), list, edit, revoke, enable, rotate and delete."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from admin import forms
from storage import audit, keys, keys_file, usage
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
    assert now.strftime("%Y-%m-%d %H:%M") in rows[active.key_id], "last used"
    assert ">3<" in rows[revoked.key_id], "rate limit"
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
