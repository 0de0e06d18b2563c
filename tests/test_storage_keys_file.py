"""storage.keys_file: the keys file seeds keys, and no re-read undoes what the operator did since."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from storage import audit, keys, keys_file
from storage.keys_file import KeysFileError
from storage.models import ApiKey

PLAIN = "pmg_seed_plaintext_key_0123456789abcdef"
OTHER = "pm_another-plaintext-key"


def write_keys(tmp_path, entries, name="api_keys.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"keys": entries}))
    return path


def seed_entries() -> list[dict]:
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
            "key_hash": hashlib.sha256(OTHER.encode()).hexdigest().upper(),
            "name": "hashed",
            "created_at": "2025-01-02",
            "expires_at": "2032-06-30T00:00:00+02:00",
            "rate_limit": 20,
        },
    ]


def stored_bytes(db_path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_the_file_seeds_keys_then_a_re_read_changes_nothing(db_path, tmp_path):
    path = write_keys(tmp_path, seed_entries())
    result = keys_file.sync(path)
    assert (result.created, result.unchanged, result.warnings) == (2, 0, [])
    plain = keys.get_key("key_seed00000001")
    assert (plain.key_hash, plain.prefix, plain.source) == (keys.hash_key(PLAIN), PLAIN[:12], "file")
    assert plain.created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    hashed = keys.get_key("key_seed00000002")
    assert hashed.prefix == keys.HASHED_PREFIX
    assert hashed.expires_at == datetime(2032, 6, 29, 22, tzinfo=UTC)
    assert hashed.rate_limit == 20 and hashed.enabled
    assert PLAIN.encode() not in stored_bytes(db_path)
    assert keys_file.sync(path).counts() == {
        "created": 0,
        "updated": 0,
        "unchanged": 2,
        "revoked": 0,
        "skipped": 0,
    }
    assert [e.action for e in audit.recent()] == ["key.created", "key.created"]


def test_the_original_proxys_fields_mean_what_they_meant(db_path, tmp_path):
    # Its key_manager read `key` (plaintext), `description`, Unix-seconds times, and made the id
    # from the hash when none was given.
    entry = {"key": OTHER, "description": "old laptop", "created_at": 1735787045.5, "expires_at": 2000000000}
    result = keys_file.sync(write_keys(tmp_path, [entry]))
    assert result.created == 1 and result.warnings == []
    key = ApiKey.get(ApiKey.key_hash == keys.hash_key(OTHER))
    assert key.key_id == keys.hash_key(OTHER)[:8]
    assert key.name == "old laptop"
    assert key.created_at == datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert key.expires_at == datetime(2033, 5, 18, 3, 33, 20, tzinfo=UTC)


def test_an_unknown_field_is_named_and_the_key_still_imported(db_path, tmp_path):
    entries = seed_entries()
    entries[0].update(owner="team-a", scopes=["chat"])
    result = keys_file.sync(write_keys(tmp_path, entries))
    assert result.created == 2
    (warning,) = result.warnings
    assert warning == (
        f"{tmp_path / 'api_keys.json'}: entry 0 ('key_seed00000001'): "
        "unknown field(s) 'owner', 'scopes' ignored"
    )


def test_a_revocation_is_never_undone_by_a_re_read_or_an_edit_elsewhere(db_path, tmp_path):
    entries = seed_entries()
    path = write_keys(tmp_path, entries)
    keys_file.sync(path)
    keys.revoke("key_seed00000001", by="cli")
    assert keys_file.sync(path).unchanged == 2  # a restart
    entries[1]["rate_limit"] = 99  # an edit of another entry
    entries[0]["name"] = "renamed in the file"  # and of this entry, but not of `enabled`
    result = keys_file.sync(write_keys(tmp_path, entries))
    assert result.updated == 2
    first = keys.get_key("key_seed00000001")
    assert (first.enabled, first.name) == (False, "renamed in the file")
    assert keys.get_key("key_seed00000002").rate_limit == 99


def test_a_rotation_is_never_undone_and_the_old_secret_stays_dead(db_path, tmp_path):
    entries = seed_entries()
    keys_file.sync(write_keys(tmp_path, entries))
    new_secret = keys.rotate("key_seed00000001", by="admin")
    entries[0]["expires_at"] = "2031-01-01T00:00:00Z"
    keys_file.sync(write_keys(tmp_path, entries))  # restart, and an edit of the same entry
    key = keys.get_key("key_seed00000001")
    assert key.key_hash == keys.hash_key(new_secret) != keys.hash_key(PLAIN)
    assert key.expires_at == datetime(2031, 1, 1, tzinfo=UTC)


def test_what_the_file_itself_changes_applies_and_is_audited(db_path, tmp_path):
    entries = seed_entries()
    keys_file.sync(write_keys(tmp_path, entries))
    keys.update("key_seed00000001", rate_limit=5, by="cli")
    entries[0]["api_key"] = OTHER + "-rotated-in-the-file"
    entries[0]["enabled"] = False
    result = keys_file.sync(write_keys(tmp_path, entries))
    assert result.updated == 1
    key = keys.get_key("key_seed00000001")
    assert key.key_hash == keys.hash_key(OTHER + "-rotated-in-the-file")
    assert key.prefix == OTHER[:12]
    assert key.enabled is False and key.revoked_at is not None
    assert key.rate_limit == 5, "the CLI's limit stays: the file did not change rate_limit"
    last = audit.recent(1)[0]
    assert (last.action, last.client_addr) == ("key.updated", "API_KEYS_FILE")
    assert "(new secret)" in last.detail and "enabled=False" in last.detail
    assert OTHER not in last.detail


def test_a_key_whose_entry_leaves_the_file_is_revoked_once(db_path, tmp_path):
    entries = seed_entries()
    keys_file.sync(write_keys(tmp_path, entries))
    result = keys_file.sync(write_keys(tmp_path, entries[1:]))
    assert result.revoked == 1
    assert keys.key_status(keys.get_key("key_seed00000001")) == "revoked"
    revoked = audit.recent(1)[0]
    assert (revoked.action, revoked.client_addr) == ("key.revoked", "API_KEYS_FILE")
    assert "left API_KEYS_FILE" in revoked.detail
    keys.enable("key_seed00000001", by="cli")  # the operator's word
    assert keys_file.sync(write_keys(tmp_path, entries[1:])).revoked == 0
    assert keys.key_status(keys.get_key("key_seed00000001")) == "active"


def test_an_entry_that_returns_does_not_bring_its_key_back(db_path, tmp_path):
    entries = seed_entries()
    keys_file.sync(write_keys(tmp_path, entries))
    keys_file.sync(write_keys(tmp_path, entries[1:]))
    keys_file.sync(write_keys(tmp_path, entries))  # e.g. an old copy of the file restored
    assert keys.key_status(keys.get_key("key_seed00000001")) == "revoked"
    entries[0]["rate_limit"] = 3  # from now on the file's edits apply again
    keys_file.sync(write_keys(tmp_path, entries))
    assert keys.get_key("key_seed00000001").rate_limit == 3


def test_a_key_from_before_this_rule_keeps_what_was_decided(db_path, tmp_path):
    entries = seed_entries()
    keys_file.sync(write_keys(tmp_path, entries))
    keys.revoke("key_seed00000001")
    # As a release-0.1 database has it: a file key with no record of what the file said.
    ApiKey.update(file_entry=None).execute()
    assert keys_file.sync(write_keys(tmp_path, entries)).unchanged == 2
    assert keys.key_status(keys.get_key("key_seed00000001")) == "revoked"


def test_an_entry_naming_an_admin_key_is_skipped_with_a_warning(db_path, tmp_path):
    key, secret = keys.create_key("made by hand", source="admin")
    entry = {"key_id": key.key_id, "api_key": PLAIN, "name": "from file"}
    result = keys_file.sync(write_keys(tmp_path, [entry]))
    assert result.skipped == 1 and "made in the admin" in result.warnings[0]
    kept = keys.get_key(key.key_id)
    assert (kept.name, kept.source, kept.key_hash) == ("made by hand", "admin", keys.hash_key(secret))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(key_id=""), "entry 0 .*: key_id"),
        (lambda e: e.pop("api_key"), "needs api_key"),
        (lambda e: e.update(key_hash="abc"), "key_hash"),
        (lambda e: e.update(key_hash="0" * 64), "not the SHA-256"),
        (lambda e: e.update(expires_at="next year"), r"\('key_seed00000001'\): expires_at"),
        (lambda e: e.update(expires_at=True), "expires_at"),
        (lambda e: e.update(rate_limit="10"), "rate_limit"),
        (lambda e: e.update(enabled="yes"), "enabled"),
        (lambda e: e.update(name=3), "name"),
        (lambda e: e.update(name="a\x1b[31mb"), "control characters"),
    ],
)
def test_a_bad_entry_is_named_and_nothing_changes(db_path, tmp_path, change, message):
    entries = seed_entries()
    change(entries[0])
    with pytest.raises(KeysFileError, match=message):
        keys_file.sync(write_keys(tmp_path, entries))
    assert keys.list_keys() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["key"]', "expected an object"),
        ('{"keys": {}}', "expected an object"),
        ('{"keys": ["key"]}', "entry 0: must be an object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_a_bad_file_is_refused(db_path, tmp_path, content, message):
    path = tmp_path / "api_keys.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KeysFileError, match=message):
        keys_file.sync(path)


def test_a_missing_file_is_refused(db_path, tmp_path):
    with pytest.raises(KeysFileError, match="cannot read"):
        keys_file.sync(tmp_path / "nope.json")


def test_duplicates_and_clashes_refuse_the_whole_file(db_path, tmp_path):
    entries = seed_entries()
    with pytest.raises(KeysFileError, match="entry 2 .*twice"):
        keys_file.sync(write_keys(tmp_path, [*entries, dict(entries[0], key_id="key_other")]))
    with pytest.raises(KeysFileError, match="key_id appears twice"):
        keys_file.sync(write_keys(tmp_path, [*entries, dict(entries[1], key_hash="1" * 64)]))
    key, plaintext = keys.create_key("existing")
    clash = {"key_id": "key_clash", "api_key": plaintext}
    with pytest.raises(KeysFileError, match=f"already stored as {key.key_id}"):
        keys_file.sync(write_keys(tmp_path, [*entries, clash]))
    assert [k.key_id for k in keys.list_keys()] == [key.key_id]


def test_copy_in_makes_ordinary_keys_that_the_keys_file_leaves_alone(db_path, tmp_path):
    entries = seed_entries()
    result = keys_file.copy_in(write_keys(tmp_path, entries, "export.json"), by="cli")
    assert (result.created, result.skipped) == (2, 0)
    assert {k.source for k in keys.list_keys()} == {"cli"}
    assert keys_file.copy_in(write_keys(tmp_path, entries, "export.json"), by="cli").skipped == 2
    # API_KEYS_FILE without these entries revokes only its own keys.
    assert keys_file.sync(write_keys(tmp_path, [])).revoked == 0
    assert all(keys.key_status(k) == "active" for k in keys.list_keys())


def test_the_originals_api_keys_variable_is_followed_like_the_file(db_path, tmp_path):
    path = write_keys(tmp_path, seed_entries())
    result = keys_file.sync(path, ["pm_env_one", "pm_env_two"])
    assert result.created == 4
    one = ApiKey.get(ApiKey.key_hash == keys.hash_key("pm_env_one"))
    assert (one.key_id, one.name, one.source) == (
        f"env_{keys.hash_key('pm_env_one')[:8]}",
        "from API_KEYS",
        "file",
    )
    assert keys_file.sync(path, ["pm_env_two", "pm_env_one"]).unchanged == 4, "order does not matter"
    assert keys_file.sync(path, ["pm_env_two"]).revoked == 1
    assert keys.key_status(keys.get_key(one.key_id)) == "revoked"


def test_without_a_file_nothing_is_revoked(db_path, tmp_path):
    keys_file.sync(write_keys(tmp_path, seed_entries()))
    result = keys_file.sync(None, ["pm_env_one"])
    assert (result.created, result.revoked) == (1, 0)
    assert all(keys.key_status(k) == "active" for k in keys.list_keys())
    with pytest.raises(KeysFileError, match="API_KEYS: entry 2: .*appears twice"):
        keys_file.sync(None, ["pm_env_one", "pm_env_one"])
