"""storage.keys: generating, hashing and changing keys, and importing a keys file."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage import audit, keys
from storage.keys import KeyNotFound


def stored_bytes(db_path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_generate_key_has_256_random_bits():
    key = keys.generate_key()
    assert key.startswith("pmg_")
    assert re.fullmatch(r"pmg_[A-Za-z0-9_-]{43}", key)  # 32 bytes in urlsafe base64
    assert keys.generate_key() != key


def test_hash_key_is_sha256_hex():
    assert keys.hash_key("pmg_x") == hashlib.sha256(b"pmg_x").hexdigest()


def test_create_key_stores_only_the_hash(db_path):
    key, plaintext = keys.create_key("n8n", rate_limit=30, source="admin")
    assert re.fullmatch(r"key_[0-9a-f]{12}", key.key_id)
    assert key.prefix == plaintext[:12]
    assert key.key_hash == keys.hash_key(plaintext)
    assert (key.name, key.rate_limit, key.source, key.enabled) == ("n8n", 30, "admin", True)
    assert key.created_at.tzinfo is not None
    stored = keys.get_key(key.key_id)
    assert stored.created_at == key.created_at
    assert plaintext.encode() not in stored_bytes(db_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "name"),
        ({"name": "a", "rate_limit": 0}, "rate_limit"),
        ({"name": "a", "rate_limit": True}, "rate_limit"),
        ({"name": "a", "expires_at": datetime(2030, 1, 1)}, "expires_at"),
        ({"name": "a", "source": "web"}, "source"),
    ],
)
def test_create_key_refuses_bad_values(db_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keys.create_key(**kwargs)
    assert keys.list_keys() == []


def test_list_keys_oldest_first(db_path):
    first, _ = keys.create_key("first")
    second, _ = keys.create_key("second")
    assert [k.key_id for k in keys.list_keys()] == [first.key_id, second.key_id]


@pytest.mark.parametrize("action", [keys.get_key, keys.revoke, keys.enable, keys.delete, keys.rotate])
def test_unknown_key(db_path, action):
    with pytest.raises(KeyNotFound, match="key_missing"):
        action("key_missing")


def test_revoke_and_enable(db_path):
    key, _ = keys.create_key("k")
    revoked = keys.revoke(key.key_id)
    assert revoked.enabled is False and revoked.revoked_at is not None
    assert keys.key_status(revoked) == "revoked"
    enabled = keys.enable(key.key_id)
    assert enabled.enabled is True and enabled.revoked_at is None
    assert keys.key_status(enabled) == "active"


def test_delete(db_path):
    key, _ = keys.create_key("k")
    keys.delete(key.key_id)
    assert keys.list_keys() == []


def test_rotate_keeps_the_id_and_kills_the_old_secret(db_path):
    key, old = keys.create_key("k", rate_limit=7)
    new = keys.rotate(key.key_id)
    rotated = keys.get_key(key.key_id)
    assert new != old
    assert rotated.key_hash == keys.hash_key(new) != keys.hash_key(old)
    assert rotated.prefix == new[:12]
    assert rotated.rate_limit == 7


def test_update_only_what_is_given_and_none_clears(db_path):
    expiry = datetime(2031, 5, 1, tzinfo=UTC)
    key, _ = keys.create_key("k", rate_limit=10, expires_at=expiry)
    updated = keys.update(key.key_id, name="renamed")
    assert (updated.name, updated.rate_limit, updated.expires_at) == ("renamed", 10, expiry)
    cleared = keys.update(key.key_id, rate_limit=None, expires_at=None)
    assert (cleared.name, cleared.rate_limit, cleared.expires_at) == ("renamed", None, None)
    assert keys.update(key.key_id).name == "renamed"
    with pytest.raises(ValueError, match="rate_limit"):
        keys.update(key.key_id, rate_limit=-1)
    with pytest.raises(KeyNotFound):
        keys.update("key_missing", name="x")


def test_key_status_expiry(db_path):
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    key, _ = keys.create_key("k", expires_at=now)
    key = keys.get_key(key.key_id)
    assert keys.key_status(key, now - timedelta(microseconds=1)) == "active"
    assert keys.key_status(key, now) == "expired"
    # An expiry given in another time zone is the same instant.
    other_zone = datetime(2030, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert keys.update(key.key_id, expires_at=other_zone).expires_at == now
    keys.revoke(key.key_id)
    assert keys.key_status(keys.get_key(key.key_id), now - timedelta(days=1)) == "revoked"


def test_every_change_writes_its_audit_row_in_one_place(db_path):
    key, _ = keys.create_key("n8n", source="admin", by="203.0.113.7")
    keys.update(key.key_id, name="n8n prod", rate_limit=5, by="203.0.113.7")
    keys.update(key.key_id, name="n8n prod", by="cli")  # nothing changed: nothing audited
    keys.revoke(key.key_id, by="cli")
    keys.enable(key.key_id, by="cli")
    keys.rotate(key.key_id, by="cli")
    keys.delete(key.key_id, by="cli")
    rows = [(e.action, e.detail, e.client_addr) for e in reversed(audit.recent())]
    assert rows == [
        ("key.created", f"key_id={key.key_id} name='n8n'", "203.0.113.7"),
        ("key.updated", f"key_id={key.key_id} name='n8n prod' rate_limit=5", "203.0.113.7"),
        ("key.revoked", f"key_id={key.key_id}", "cli"),
        ("key.enabled", f"key_id={key.key_id}", "cli"),
        ("key.rotated", f"key_id={key.key_id}", "cli"),
        ("key.deleted", f"key_id={key.key_id} name='n8n prod'", "cli"),
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("x" * 101, "at most 100"), ("a\nb", "control"), ("\x1b]0;x\x07", "control")],
)
def test_name_rules_are_the_same_for_every_caller(db_path, name, message):
    with pytest.raises(ValueError, match=message):
        keys.create_key(name)
    key, _ = keys.create_key("ok")
    with pytest.raises(ValueError, match=message):
        keys.update(key.key_id, name=name)


def test_an_expiry_date_is_valid_through_that_day():
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert keys.parse_expiry(" ", now) is None
    assert keys.parse_expiry("2026-05-01", now) == datetime(2026, 5, 1, 23, 59, 59, tzinfo=UTC)
    assert keys.parse_expiry("2026-05-01T18:00:00+02:00", now) == datetime(2026, 5, 1, 16, tzinfo=UTC)
    assert keys.parse_expiry("2026-05-01T13:00", now) == datetime(2026, 5, 1, 13, tzinfo=UTC)
    for past in ("2026-04-30", "2026-05-01T12:00:00Z"):
        with pytest.raises(ValueError, match="already past"):
            keys.parse_expiry(past, now)
    with pytest.raises(ValueError, match="not a date"):
        keys.parse_expiry("31.12.2026", now)


def test_spend_control_settings_follow_their_rules(db_path):
    models = ["gpt-oss-120b", " gemma-3-27b ", "gpt-oss-120b"]
    key, _ = keys.create_key("n8n", budget_eur=5, models=models, tpm=1000)
    # A budget is monthly unless it says otherwise.
    assert (key.budget_eur, key.budget_period, key.tpm) == (5.0, "month", 1000)
    assert keys.allowed_models(keys.get_key(key.key_id)) == ("gpt-oss-120b", "gemma-3-27b")
    updated = keys.update(key.key_id, budget_period="week", models=[], tpm=None, by="cli")
    assert (updated.budget_period, keys.allowed_models(updated), updated.tpm) == ("week", (), None)
    assert audit.recent(1)[0].detail == f"key_id={key.key_id} budget_period='week' models=none tpm=none"
    cleared = keys.update(key.key_id, budget_eur=None)
    assert cleared.budget_eur is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget_eur": 0}, "budget"),
        ({"budget_eur": -1.5}, "budget"),
        ({"budget_eur": True}, "budget"),
        ({"budget_eur": 5, "budget_period": "year"}, "budget period"),
        ({"models": "gpt-oss-120b"}, "models: a list"),
        ({"models": ["gpt oss"]}, "not a model name"),
        ({"models": ["x" * 257]}, "not a model name"),
        ({"models": ["a\x1b[31m"]}, "not a model name"),
        ({"tpm": 0}, "tpm"),
        ({"colour": "red"}, "no such key setting"),
    ],
)
def test_spend_control_refuses_bad_values(db_path, settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        keys.create_key("k", **settings)
    assert keys.list_keys() == []
