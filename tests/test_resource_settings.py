"""The settings that bound what clients can make the gateway hold: defaults, and bad values refused."""

from __future__ import annotations

import pytest

from storage import config


def test_defaults():
    s = config.load({})
    assert (s.body_memory_mb, s.max_body_mb) == (256, 30)
    assert (s.client_idle_timeout, s.header_timeout, s.upstream_idle_timeout) == (60.0, 30.0, 120.0)
    assert s.max_connections_per_client == 64


def test_room_for_bodies_follows_a_larger_body_limit():
    assert config.load({"MAX_BODY_MB": "300"}).body_memory_mb == 300


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BODY_MEMORY_MB": "10"}, "BODY_MEMORY_MB"),  # under MAX_BODY_MB: a full-size body never fits
        ({"BODY_MEMORY_MB": "lots"}, "BODY_MEMORY_MB"),
        ({"CLIENT_IDLE_TIMEOUT": "0"}, "CLIENT_IDLE_TIMEOUT"),
        ({"HEADER_TIMEOUT": "-1"}, "HEADER_TIMEOUT"),
        ({"MAX_CONNECTIONS_PER_CLIENT": "0"}, "MAX_CONNECTIONS_PER_CLIENT"),
        ({"UPSTREAM_IDLE_TIMEOUT": "soon"}, "UPSTREAM_IDLE_TIMEOUT"),
    ],
)
def test_a_bad_value_names_its_variable(env, named):
    with pytest.raises(config.ConfigError) as caught:
        config.load(env)
    assert str(caught.value).startswith(f"{named}: ")
