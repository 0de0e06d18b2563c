"""storage.keys: generating, hashing and changing keys, and importing a keys file."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage import keys
from storage.keys import KeyNotFound, KeysFileError


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


# -- keys file ----------------------------------------------------------------------------------


def write_keys(tmp_path, entries, name="api_keys.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"keys": entries}))
    return path


PLAIN = "pmg_seed_plaintext_key_0123456789abcdef"


def seed_entries():
    return [
        {
            "key_id": "key_seed00000001",
            "api_key": PLAIN,
            "name": "seed",
            "created_at": "2025-01-02T03:04:05Z",
            "expires_at": None,
            "rate_limit": None,
            "enabled": True,
        },
        {
            "key_id": "key_seed00000002",
            "key_hash": hashlib.sha256(b"another").hexdigest().upper(),
            "name": "hashed",
            "created_at": "2025-01-02",
            "expires_at": "2032-06-30T00:00:00+02:00",
            "rate_limit": 20,
        },
    ]


def test_import_creates_then_leaves_unchanged(db_path, tmp_path):
    path = write_keys(tmp_path, seed_entries())
    assert keys.import_keys_file(path) == keys.ImportResult(created=2, updated=0, unchanged=0)
    plain = keys.get_key("key_seed00000001")
    assert plain.key_hash == keys.hash_key(PLAIN)
    assert plain.prefix == PLAIN[:12]
    assert plain.source == "file"
    assert plain.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    hashed = keys.get_key("key_seed00000002")
    assert hashed.key_hash == hashlib.sha256(b"another").hexdigest()
    assert hashed.prefix == keys.HASHED_PREFIX
    assert hashed.expires_at == datetime(2032, 6, 29, 22, tzinfo=UTC)
    assert hashed.rate_limit == 20 and hashed.enabled
    assert PLAIN.encode() not in stored_bytes(db_path)
    assert keys.import_keys_file(path) == keys.ImportResult(created=0, updated=0, unchanged=2)


def test_import_updates_changed_entries(db_path, tmp_path):
    entries = seed_entries()
    keys.import_keys_file(write_keys(tmp_path, entries))
    entries[0]["enabled"] = False
    entries[1]["rate_limit"] = None
    # Only the hash of the first key now, which is the same key: its prefix is kept.
    del entries[0]["api_key"]
    entries[0]["key_hash"] = keys.hash_key(PLAIN)
    result = keys.import_keys_file(write_keys(tmp_path, entries))
    assert result == keys.ImportResult(created=0, updated=2, unchanged=0)
    first = keys.get_key("key_seed00000001")
    assert first.enabled is False and first.revoked_at is not None
    assert first.prefix == PLAIN[:12]
    assert keys.get_key("key_seed00000002").rate_limit is None


def test_import_takes_over_a_cli_key_by_id(db_path, tmp_path):
    key, _ = keys.create_key("made by hand")
    entry = {"key_id": key.key_id, "api_key": PLAIN, "name": "from file"}
    assert keys.import_keys_file(write_keys(tmp_path, [entry])).updated == 1
    taken = keys.get_key(key.key_id)
    assert (taken.name, taken.source, taken.key_hash) == ("from file", "file", keys.hash_key(PLAIN))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("key_id"), "entry 0: key_id"),
        (lambda e: e.pop("api_key"), "needs api_key or key_hash"),
        (lambda e: e.update(key_hash="abc"), "key_hash"),
        (lambda e: e.update(key_hash="0" * 64), "not the SHA-256"),
        (lambda e: e.update(expires_at="next year"), r"\(key_seed00000001\): expires_at"),
        (lambda e: e.update(expires_at=5), "expires_at"),
        (lambda e: e.update(rate_limit="10"), "rate_limit"),
        (lambda e: e.update(enabled="yes"), "enabled"),
        (lambda e: e.update(name=3), "name"),
        (lambda e: e.update(expire_at="2030-01-01"), "unknown field.*expire_at"),
    ],
)
def test_import_names_the_bad_entry(db_path, tmp_path, change, message):
    entries = seed_entries()
    change(entries[0])
    with pytest.raises(KeysFileError, match=message):
        keys.import_keys_file(write_keys(tmp_path, entries))
    assert keys.list_keys() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["key"]', "expected an object"),
        ('{"keys": {}}', "expected an object"),
        ('{"keys": ["key"]}', "entry 0: must be an object"),
    ],
)
def test_import_refuses_a_bad_file(db_path, tmp_path, content, message):
    path = tmp_path / "api_keys.json"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=message):
        keys.import_keys_file(path)


def test_import_missing_file(db_path, tmp_path):
    with pytest.raises(KeysFileError, match="cannot read"):
        keys.import_keys_file(tmp_path / "nope.json")


def test_import_refuses_duplicates_and_is_all_or_nothing(db_path, tmp_path):
    entries = seed_entries()
    with pytest.raises(KeysFileError, match="entry 2 .*twice"):
        keys.import_keys_file(write_keys(tmp_path, [*entries, dict(entries[0], key_id="key_other")]))
    with pytest.raises(KeysFileError, match="key_id appears twice"):
        keys.import_keys_file(write_keys(tmp_path, [*entries, dict(entries[1], key_hash="1" * 64)]))
    # The same secret already stored under another id: refused, and nothing is written.
    key, plaintext = keys.create_key("existing")
    clash = {"key_id": "key_clash", "api_key": plaintext}
    with pytest.raises(KeysFileError, match=f"already stored as {key.key_id}"):
        keys.import_keys_file(write_keys(tmp_path, [*entries, clash]))
    assert [k.key_id for k in keys.list_keys()] == [key.key_id]
