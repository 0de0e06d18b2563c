"""storage.config: the environment means what the original auth proxy's documentation said."""

from __future__ import annotations

import pytest

from storage import config
from storage.settings import Limits


def limits(**env: str) -> Limits:
    return Limits.from_settings(config.load(env))


def test_rate_limit_is_the_global_limit_with_the_originals_defaults():
    assert limits() == Limits(
        key_rate_limit_requests=100,
        key_rate_limit_window=60,
        ip_rate_limit_requests=1000,
        ip_rate_limit_window=60,
        global_rate_limit_requests=100,
        global_rate_limit_window=60,
    )
    got = limits(RATE_LIMIT_REQUESTS="20", RATE_LIMIT_WINDOW="60")
    assert (got.global_rate_limit_requests, got.global_rate_limit_window) == (20, 60)


def test_keys_without_a_default_of_their_own_are_bounded_by_the_global_limit_alone():
    got = limits(RATE_LIMIT_REQUESTS="20", RATE_LIMIT_WINDOW="30")
    assert (got.key_rate_limit_requests, got.key_rate_limit_window) == (20, 30)
    got = limits(RATE_LIMIT_REQUESTS="20", KEY_RATE_LIMIT_REQUESTS="5", KEY_RATE_LIMIT_WINDOW="10")
    assert (got.key_rate_limit_requests, got.key_rate_limit_window, got.global_rate_limit_requests) == (
        5,
        10,
        20,
    )


def test_global_rate_limit_stays_an_alias():
    got = limits(GLOBAL_RATE_LIMIT_REQUESTS="40", GLOBAL_RATE_LIMIT_WINDOW="120")
    assert (got.global_rate_limit_requests, got.global_rate_limit_window) == (40, 120)
    assert limits(RATE_LIMIT_REQUESTS="40", GLOBAL_RATE_LIMIT_REQUESTS="40").global_rate_limit_requests == 40


def test_two_different_global_limits_are_refused_naming_both():
    # A 0.1 setup with RATE_LIMIT_REQUESTS meant per key: it must not silently become the global.
    with pytest.raises(
        config.ConfigError, match="^RATE_LIMIT_REQUESTS: 60 differs from GLOBAL_RATE_LIMIT_REQUESTS=1000"
    ):
        config.load({"RATE_LIMIT_REQUESTS": "60", "GLOBAL_RATE_LIMIT_REQUESTS": "1000"})


@pytest.mark.parametrize("name", ["KEY_RATE_LIMIT_REQUESTS", "GLOBAL_RATE_LIMIT_WINDOW", "RATE_LIMIT_WINDOW"])
def test_bad_limits_name_their_variable(name):
    with pytest.raises(config.ConfigError, match=f"^{name}: must be at least 1"):
        config.load({name: "0"})


def test_the_originals_port_and_api_keys_variables():
    assert config.load({"PORT": "9000"}).listen_port == 9000
    assert config.load({"PORT": "9000", "LISTEN_PORT": "9100"}).listen_port == 9100
    assert config.load({"API_KEYS": " pm_a, ,pm_b "}).api_keys_env == ("pm_a", "pm_b")
    assert config.load({}).api_keys_env == ()
    with pytest.raises(config.ConfigError, match="^PORT:"):
        config.load({"PORT": "http"})
