"""storage.audit: append and read back."""

from __future__ import annotations

import pytest

from storage import audit
from storage.db import close_database, open_database, revision


@pytest.fixture
def db(tmp_path):
    yield open_database(f"sqlite:///{tmp_path / 'gateway.db'}")
    close_database()


def test_record_and_recent(db):
    start = revision()
    audit.record("key.created", "key_id=key_000000000001", "203.0.113.7")
    audit.record("key.revoked", "key_id=key_000000000001")
    audit.record("login.failed")
    entries = audit.recent()
    assert [e.action for e in entries] == ["login.failed", "key.revoked", "key.created"]
    assert (entries[2].detail, entries[2].client_addr) == ("key_id=key_000000000001", "203.0.113.7")
    assert (entries[0].detail, entries[0].client_addr) == ("", "")
    assert entries[0].ts.tzinfo is not None and entries[0].ts >= entries[2].ts
    assert [e.action for e in audit.recent(limit=1)] == ["login.failed"]
    # The gateway has nothing to reload for an audit entry.
    assert revision() == start
