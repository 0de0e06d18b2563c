"""Rate limits through the real gateway: per key, per IP, global, exact under concurrency, live."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from storage import keys, settings
from tests import procs

WIDE = {
    "RATE_LIMIT_REQUESTS": "100000",
    "RATE_LIMIT_WINDOW": "3600",
    "GLOBAL_RATE_LIMIT_REQUESTS": "100000",
    "GLOBAL_RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "100000",
    "IP_RATE_LIMIT_WINDOW": "3600",
}


def models(gateway, key: str | None = None, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.get(f"{gateway.url}/v1/models", headers=headers)


def assert_limited(r: httpx.Response, scope: str) -> None:
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and scope in error["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-requests" in r.headers and "x-ratelimit-reset-requests" in r.headers


def test_per_key_limit(start_gateway):
    gateway = start_gateway(**WIDE)
    key_id, plaintext = gateway.new_key(rate_limit=3)  # the probe takes one request
    assert models(gateway, plaintext).status_code == 200
    ok = models(gateway, plaintext)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "3"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert_limited(models(gateway, plaintext), "per-key")
    _, other = gateway.new_key()
    assert models(gateway, other).status_code == 200, "other keys are not affected"
    rows = gateway.usage_rows(key_id, count=3)
    assert [r.status for r in rows] == [200, 200, 429]


def test_exact_under_concurrency(start_gateway):
    """Room for N: 3N simultaneous requests let exactly N through."""
    gateway = start_gateway(**WIDE)
    n = 10
    _, plaintext = gateway.new_key(rate_limit=n + 1)  # +1 for the probe

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=3 * n)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            responses = await asyncio.gather(
                *[
                    client.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {plaintext}"})
                    for _ in range(3 * n)
                ]
            )
        return sorted(r.status_code for r in responses)

    assert asyncio.run(burst()) == [200] * n + [429] * (2 * n)


def test_per_ip_limit_applies_before_the_key_and_ignores_forwarded_for(start_gateway):
    gateway = start_gateway(**{**WIDE, "IP_RATE_LIMIT_REQUESTS": "4"})
    for i in range(4):
        assert models(gateway, "pmg_guess", **{"x-forwarded-for": f"10.0.0.{i}"}).status_code == 401
    assert_limited(models(gateway, "pmg_guess", **{"x-forwarded-for": "10.0.0.99"}), "per-IP")
    assert_limited(httpx.get(f"{gateway.url}/admin/"), "per-IP")
    assert httpx.get(f"{gateway.url}/health").status_code == 200, "health is never limited"


def test_trusted_proxy_addresses_count_separately(start_gateway):
    gateway = start_gateway(**{**WIDE, "IP_RATE_LIMIT_REQUESTS": "2", "TRUST_PROXY": "true"})
    for client_ip in ("192.0.2.1", "192.0.2.2"):
        for _ in range(2):
            assert (
                models(gateway, "pmg_guess", **{"x-forwarded-for": f"203.0.113.9, {client_ip}"}).status_code
                == 401
            )
        assert_limited(models(gateway, "pmg_guess", **{"x-forwarded-for": client_ip}), "per-IP")


def test_global_limit_covers_all_keys_and_changes_live(start_gateway):
    gateway = start_gateway(**{**WIDE, "GLOBAL_RATE_LIMIT_REQUESTS": "100000"})
    _, first = gateway.new_key()
    _, second = gateway.new_key()
    gateway.use_database()
    settings.set_limit("global_rate_limit_requests", 3)

    def applied():
        return models(gateway, first).headers.get("x-ratelimit-limit-requests") == "3"

    procs.wait_until(applied, timeout=3)  # a new rule starts with a full bucket: this took one
    assert models(gateway, second).status_code == 200
    assert models(gateway, first).status_code == 200
    assert_limited(models(gateway, second), "global")
    assert_limited(models(gateway, first), "global")


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_bad_limit_variable_stops_start_up(tmp_path, upstream, limit):
    last = procs.failed_start(tmp_path, upstream.port, RATE_LIMIT_REQUESTS=limit)
    assert last.startswith("gateway: configuration error: RATE_LIMIT_REQUESTS:")


def test_the_effective_limits_are_logged_at_start(start_gateway):
    gateway = start_gateway(RATE_LIMIT_REQUESTS="20", KEY_RATE_LIMIT_REQUESTS="5", IP_RATE_LIMIT_WINDOW="30")
    assert (
        "rate limits in force: global 20 per 60 s, per key 5 per 60 s (unless the key has its own), "
        "per client address 1000 per 30 s"
    ) in gateway.proc.log()


def test_rate_limit_requests_is_the_global_limit_as_in_the_original(start_gateway):
    # A migrating team's RATE_LIMIT_REQUESTS caps all keys together, not each key.
    gateway = start_gateway(RATE_LIMIT_REQUESTS="3", RATE_LIMIT_WINDOW="3600")
    gateway.use_database()
    plaintexts = [keys.create_key(f"k{i}")[1] for i in range(2)]
    statuses = [models(gateway, plaintexts[i % 2]).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert_limited(models(gateway, plaintexts[0]), "global")


def test_one_key_alone_is_refused_by_the_global_limit_it_was_given(start_gateway):
    # Without KEY_RATE_LIMIT_*, a refusal names the limit the operator set, not a per-key one.
    gateway = start_gateway(RATE_LIMIT_REQUESTS="2", RATE_LIMIT_WINDOW="3600")
    gateway.use_database()
    _, plaintext = keys.create_key("alone")
    assert [models(gateway, plaintext).status_code for _ in range(2)] == [200, 200]
    assert_limited(models(gateway, plaintext), "global")


def test_a_refusal_is_told_from_the_upstreams_own_error(start_gateway):
    gateway = start_gateway(**WIDE)
    key_id, plaintext = gateway.new_key(rate_limit=2)
    headers = {"authorization": f"Bearer {plaintext}"}
    chat = {"model": "gpt-oss-120b", "messages": []}
    upstream_429 = httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers, json=chat,
        params={"fake-scenario": "error", "fake-status": "429"},
    )
    assert upstream_429.status_code == 429
    assert_limited(models(gateway, plaintext), "per-key")  # the probe and the chat took both
    rows = gateway.usage_rows(key_id, count=2)
    assert [(r.status, r.refused) for r in rows] == [(429, False), (429, True)]
