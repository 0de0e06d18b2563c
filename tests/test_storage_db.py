"""storage.db: opening, pragmas, idempotent schema, the revision triggers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import keys, prices, settings
from storage.db import close_database, database, open_database, revision, writable
from storage.models import ApiKey, utcnow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "data" / "gateway.db"
    open_database(f"sqlite:///{path}")
    yield path
    close_database()


def test_open_creates_parent_dir_and_sets_pragmas(db_path):
    assert db_path.exists()
    assert database.pragma("journal_mode") == "wal"
    assert database.pragma("foreign_keys") == 1
    assert database.pragma("busy_timeout") == 5000
    assert database.pragma("synchronous") == 1  # NORMAL


def test_open_is_idempotent(db_path):
    before = revision()
    prices.set_price("gpt-oss-120b", input_per_mtok=1.0)
    prices.delete_price("gemma-3-27b")
    changed = revision()
    assert changed == before + 2
    open_database(f"sqlite:///{db_path}")
    # Seed rows are not inserted again: the operator's price and deletion survive.
    assert revision() == changed
    assert prices.all_prices()["gpt-oss-120b"].input_per_mtok == 1.0
    assert "gemma-3-27b" not in prices.all_prices()
    assert database.execute_sql("SELECT count(*) FROM revision").fetchone()[0] == 1


def test_non_sqlite_url_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sqlite"):
        open_database("postgres://localhost/gateway")


def test_three_processes_open_a_new_database_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'gateway.db'}"
    code = f"from storage.db import open_database; open_database({url!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE) for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    conn = sqlite3.connect(tmp_path / "new" / "gateway.db")
    try:
        assert conn.execute("SELECT count(*) FROM revision").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM price").fetchone()[0] == len(prices.SEED)
        triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
        assert triggers == 9
    finally:
        conn.close()


def test_threads_get_their_own_connections(db_path):
    key, _ = keys.create_key("seen from a thread")
    seen = {}

    def read():
        seen["keys"] = [k.key_id for k in keys.list_keys()]
        seen["conn"] = database.connection()
        close_database()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen["keys"] == [key.key_id]
    assert seen["conn"] is not database.connection()


def test_revision_bumps_on_key_changes(db_path):
    start = revision()
    key, _ = keys.create_key("k")
    assert revision() == start + 1
    keys.revoke(key.key_id)
    assert revision() == start + 2
    keys.enable(key.key_id)
    keys.update(key.key_id, rate_limit=5)
    keys.rotate(key.key_id)
    assert revision() == start + 5
    keys.delete(key.key_id)
    assert revision() == start + 6


def test_last_used_at_does_not_bump_revision(db_path):
    key, _ = keys.create_key("k")
    start = revision()
    ApiKey.update(last_used_at=utcnow()).where(ApiKey.key_id == key.key_id).execute()
    assert revision() == start


def test_raw_sql_from_another_connection_bumps_revision(db_path):
    start = revision()
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute("INSERT INTO setting (name, value) VALUES ('key_rate_limit_requests', '5')")
            conn.execute("UPDATE setting SET value = '6'")
            conn.execute("UPDATE price SET input_per_mtok = 1 WHERE model = '*'")
            conn.execute("DELETE FROM setting")
    finally:
        conn.close()
    assert revision() == start + 4


def test_settings_and_prices_bump_revision(db_path):
    start = revision()
    settings.set_limit("key_rate_limit_requests", 10)  # insert
    settings.set_limit("key_rate_limit_requests", 11)  # update
    settings.reset_limit("key_rate_limit_requests")  # delete
    prices.set_price("new-model", input_per_mtok=1)  # insert
    prices.set_price("new-model", output_per_mtok=1)  # update
    prices.delete_price("new-model")  # delete
    assert revision() == start + 6


def test_writable(db_path):
    assert writable()
    # Another process holds the write lock: writable() waits busy_timeout, then says no.
    database.execute_sql("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert not writable()
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert writable()


def test_close_database_is_safe_twice(db_path):
    close_database()
    close_database()
    assert database.is_closed()
    assert revision() >= 0  # reconnects on demand
