"""storage.settings: live limits over environment defaults."""

from __future__ import annotations

import sqlite3

import pytest

from storage import config, settings
from storage.settings import LIMIT_NAMES, Limits

DEFAULTS = Limits(100, 60, 1000, 60, 2000, 60)


def test_defaults_apply_without_stored_values(db_path):
    assert settings.load_limits(DEFAULTS) == DEFAULTS


def test_from_settings_reads_the_environment():
    env = {"KEY_RATE_LIMIT_REQUESTS": "7", "IP_RATE_LIMIT_WINDOW": "30", "RATE_LIMIT_REQUESTS": "15"}
    limits = Limits.from_settings(config.load(env))
    assert (limits.key_rate_limit_requests, limits.ip_rate_limit_window) == (7, 30)
    assert limits.global_rate_limit_requests == 15
    assert set(LIMIT_NAMES) == {
        "key_rate_limit_requests",
        "key_rate_limit_window",
        "ip_rate_limit_requests",
        "ip_rate_limit_window",
        "global_rate_limit_requests",
        "global_rate_limit_window",
    }


def test_stored_values_override_and_reset(db_path):
    assert settings.set_limit("key_rate_limit_requests", 5) == 5
    assert settings.set_limit("ip_rate_limit_window", "120") == 120
    assert settings.set_limit("key_rate_limit_requests", 6.0) == 6
    limits = settings.load_limits(DEFAULTS)
    assert (limits.key_rate_limit_requests, limits.ip_rate_limit_window) == (6, 120)
    assert limits.key_rate_limit_window == DEFAULTS.key_rate_limit_window
    assert settings.reset_limit("key_rate_limit_requests") is True
    assert settings.reset_limit("key_rate_limit_requests") is False
    assert settings.load_limits(DEFAULTS).key_rate_limit_requests == DEFAULTS.key_rate_limit_requests


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("key_rate_limit_requests", 0, "positive integer"),
        ("key_rate_limit_requests", -3, "positive integer"),
        ("key_rate_limit_requests", "ten", "positive integer"),
        ("key_rate_limit_requests", 2.5, "positive integer"),
        ("key_rate_limit_requests", True, "positive integer"),
        ("key_rate_limit_requests", None, "positive integer"),
        ("max_body_mb", 5, "unknown setting"),
    ],
)
def test_set_limit_refuses_bad_values(db_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        settings.set_limit(name, value)
    assert settings.load_limits(DEFAULTS) == DEFAULTS


def test_reset_unknown_limit(db_path):
    with pytest.raises(ValueError, match="unknown setting"):
        settings.reset_limit("nope")


def test_a_bad_value_written_by_hand_keeps_the_default(db_path):
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("INSERT INTO setting VALUES ('key_rate_limit_requests', 'lots'), ('other', 'x')")
    conn.close()
    assert settings.load_limits(DEFAULTS) == DEFAULTS
