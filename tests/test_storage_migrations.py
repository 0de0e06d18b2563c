"""storage.migrations: a database made by release 0.1 opens with this code, its meaning intact."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from storage import db, keys, keys_file, migrations, settings, usage
from storage.models import AuditLog, DailyUsage, Usage

# Made by tests/fixtures/make_release_0_1.py with the code of release 0.1 (commit b62f125).
RELEASE_0_1 = Path(__file__).parent / "fixtures" / "release-0.1.db"
DEFAULTS = settings.Limits(100, 60, 1000, 60, 100, 60)


@pytest.fixture
def old_db(tmp_path):
    path = tmp_path / "gateway.db"
    shutil.copy(RELEASE_0_1, path)
    db.open_database(f"sqlite:///{path}")
    yield path
    db.close_database()


def test_the_fixture_is_a_release_0_1_database():
    conn = sqlite3.connect(RELEASE_0_1)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_key)")}
    finally:
        conn.close()
    assert "schema_version" not in tables and "file_entry" not in columns


def test_keys_usage_and_audit_keep_their_meaning(old_db):
    assert migrations.current_version(db.database) == migrations.LATEST
    by_name = {k.name: k for k in keys.list_keys()}
    assert set(by_name) == {"n8n production", "zapier", "Legacy"}
    assert (
        keys.key_status(by_name["n8n production"]) == "active" and by_name["n8n production"].rate_limit == 60
    )
    assert keys.key_status(by_name["zapier"]) == "revoked"
    assert by_name["zapier"].expires_at == datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC)
    legacy = by_name["Legacy"]
    assert (legacy.key_id, legacy.source, legacy.rate_limit, legacy.file_entry) == (
        "legacy",
        "file",
        30,
        None,
    )
    assert legacy.key_hash == keys.hash_key("pm_legacy-secret-0123456789")
    # Spend control came later: no budget, every model, no token limit, as before.
    for key in by_name.values():
        assert (key.budget_eur, key.budget_period, key.models, key.tpm) == (None, None, None, None)
    assert Usage.select().count() == 3
    assert DailyUsage.get().day == date(2026, 11, 20) and DailyUsage.get().requests == 3
    assert AuditLog.select().count() == 1


def test_the_per_key_default_keeps_its_meaning_under_its_new_name(old_db):
    # 0.1 stored the per-key default as rate_limit_*; that name is now the global limit.
    limits = settings.load_limits(DEFAULTS)
    assert (limits.key_rate_limit_requests, limits.key_rate_limit_window) == (50, 30)
    assert limits.global_rate_limit_requests == 500


def test_changes_made_after_migrating_still_reach_the_gateway(old_db):
    before = db.revision()
    keys.update("legacy", name="Legacy, renamed")
    settings.set_limit("key_rate_limit_requests", 7)
    assert db.revision() == before + 2


def test_a_migrated_file_key_keeps_a_revocation_made_before_the_upgrade(old_db, tmp_path):
    keys.revoke("legacy")
    path = tmp_path / "api_keys.json"
    path.write_text(
        '{"keys": [{"key_id": "legacy", "api_key": "pm_legacy-secret-0123456789", "name": "Legacy",'
        ' "rate_limit": 30}]}'
    )
    assert keys_file.sync(path).unchanged == 1
    assert keys.key_status(keys.get_key("legacy")) == "revoked"


def test_opening_again_migrates_nothing(old_db):
    assert db._create_schema() == []
    conn = sqlite3.connect(old_db)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(migrations.LATEST,)]
    finally:
        conn.close()


def test_a_new_database_starts_at_the_latest_version(db_path):
    assert migrations.current_version(db.database) == migrations.LATEST


def test_a_database_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "gateway.db"
    shutil.copy(RELEASE_0_1, path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (migrations.LATEST + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(migrations.SchemaTooNew, match="newer than this release"):
        db.open_database(f"sqlite:///{path}")
    db.close_database()


def _usage_shape(path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        columns = sorted((row[1], row[2], row[3]) for row in conn.execute("PRAGMA table_info(usage)"))
        indexes = sorted((row[1], row[2]) for row in conn.execute("PRAGMA index_list(usage)"))
    finally:
        conn.close()
    return columns, indexes


def test_version_3_gives_release_0_1_usage_the_unique_uid_of_a_new_database(old_db, tmp_path):
    fresh = tmp_path / "fresh.db"
    conn = sqlite3.connect(fresh)
    conn.close()
    db.open_database(f"sqlite:///{fresh}")
    assert _usage_shape(old_db) == _usage_shape(fresh)
    columns, indexes = _usage_shape(old_db)
    assert ("uid", "INTEGER", 0) in columns and ("usage_uid", 1) in indexes
    db.open_database(f"sqlite:///{old_db}")
    assert [u.uid for u in Usage.select()] == [None, None, None], "older rows have none"


def test_a_row_given_twice_is_stored_and_rolled_up_once(old_db):
    # What the gateway's journal replay relies on (addons/journal.py).
    ts = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    row = usage.UsageRecord(ts=ts, key_id="legacy", endpoint="/v1/chat/completions", model="m", status=200,
                            total_tokens=5, uid=2**62 + 7)
    usage.record_batch([row, row])
    usage.record_batch([row, usage.UsageRecord(ts=ts, key_id="legacy", endpoint="/v1/embeddings", model="m",
                                               status=200, uid=8)])
    assert Usage.select().where(Usage.uid.is_null(False)).count() == 2
    day = DailyUsage.get(DailyUsage.day == date(2026, 11, 21))
    assert (day.requests, day.total_tokens) == (2, 5)


def test_refusals_before_the_upgrade_are_estimated_from_their_status(tmp_path):
    path = tmp_path / "gateway.db"
    shutil.copy(RELEASE_0_1, path)
    conn = sqlite3.connect(path)
    key_id = conn.execute("SELECT key_id FROM api_key WHERE name = 'n8n production'").fetchone()[0]
    for status in (429, 403, 502):
        conn.execute(
            "INSERT INTO usage (ts, key_id, endpoint, model, status, prompt_tokens, completion_tokens,"
            " cached_tokens, total_tokens, audio_seconds, request_bytes, cost_eur, duration_ms, streamed,"
            " complete, default_price) VALUES ('2026-11-20 13:00:00.000000', ?, '/v1/chat/completions',"
            " 'gpt-oss-120b', ?, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0)",
            (key_id, status),
        )
    conn.execute("UPDATE daily_usage SET requests = requests + 3, errors = 3")
    conn.commit()
    conn.close()
    db.open_database(f"sqlite:///{path}")
    try:
        assert [u.refused for u in Usage.select().order_by(Usage.id)] == [False] * 3 + [True, True, False]
        assert DailyUsage.get().refused == 2
    finally:
        db.close_database()
