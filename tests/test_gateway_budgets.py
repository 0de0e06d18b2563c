"""Budgets through the real gateway and fake upstream: exact for sequential requests, bounded for
concurrent ones, streams and cut streams counted, live changes, the global budget, a restart."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import httpx
import openai
import pytest
from openai import OpenAI

from storage import keys, prices, spend
from storage.models import Usage
from tests import procs
from tests.conftest import Gateway

WIDE = {
    "RATE_LIMIT_REQUESTS": "100000",
    "RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "100000",
}
# Prices that make every token kind count differently: euros per million tokens.
PRICE = {"input_per_mtok": 1000.0, "cached_per_mtok": 100.0, "output_per_mtok": 2000.0}
# The fake upstream's chat answer: 21 prompt and 8 completion tokens.
CHAT = (21 * 1000 + 8 * 2000) / 1e6  # 0.037
# Its streamed answer: the same, 16 of the prompt tokens cached.
STREAM = (5 * 1000 + 16 * 100 + 8 * 2000) / 1e6  # 0.0226
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def priced(start_gateway) -> Gateway:
    gateway = start_gateway(**WIDE)
    gateway.use_database()
    prices.set_price("gpt-oss-120b", **PRICE)  # in the snapshot of the first key made after it
    return gateway


def client(gateway: Gateway, plaintext: str, **query: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0, default_query=query or None)


def chat(gateway: Gateway, plaintext: str, stream: bool = False, **query: str) -> None:
    with client(gateway, plaintext, **query) as api:
        answer = api.chat.completions.create(model="gpt-oss-120b", messages=MESSAGES, stream=stream)
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in answer) == "Hello there! How can I help?"


def refusal(gateway: Gateway, plaintext: str, stream: bool = False) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        chat(gateway, plaintext, stream)
    return refused.value


def requests_until_refused(gateway: Gateway, plaintext: str, stream: bool = False, most: int = 20) -> int:
    for n in range(most):
        try:
            chat(gateway, plaintext, stream)
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota", e
            return n
    raise AssertionError(f"{most} requests and no refusal")


def period_end(name: str) -> str:
    return f"{spend.period_at(name, datetime.now(UTC)).end:%Y-%m-%d %H:%M} UTC"


def models_status(gateway: Gateway, plaintext: str) -> int:
    return httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {plaintext}"}).status_code


@pytest.mark.parametrize(
    ("budget", "stream", "cost"),
    [
        (0.1, False, CHAT),  # 2.7 requests' worth
        (0.111, False, CHAT),  # exactly 3, as typed: the float sum of three costs is a hair under it
        (0.05, True, STREAM),  # streams, cached tokens at their own price: 2.2 requests' worth
    ],
)
def test_sequential_requests_stop_at_ceil_of_budget_over_cost(priced, budget, stream, cost):
    key_id, plaintext = priced.new_key(budget_eur=budget)
    assert requests_until_refused(priced, plaintext, stream) == math.ceil(round(budget / cost, 9))

    refused = refusal(priced, plaintext, stream)
    assert (refused.status_code, refused.type) == (429, "insufficient_quota")
    assert refused.response.headers["x-should-retry"] == "false"
    message = refused.body["message"]
    assert "This API key's monthly budget of" in message and f"It resets at {period_end('month')}" in message
    # The spend that stopped it is the usage page's: the daily rollup of the priced rows.
    rows = priced.usage_rows(key_id, count=math.ceil(round(budget / cost, 9)) + 2)
    assert [r.status for r in rows][-3:] == [200, 429, 429]
    assert sum(r.cost_eur for r in rows) == pytest.approx(len([r for r in rows if r.status == 200]) * cost)
    period = spend.period_at("month", datetime.now(UTC))
    assert spend.spend_by_key(period)[key_id] == pytest.approx(sum(r.cost_eur for r in rows))


def test_nothing_is_forwarded_once_the_budget_is_used_up(priced):
    _, plaintext = priced.new_key(budget_eur=0.01)  # under one request's cost
    chat(priced, plaintext, **{"fake-marker": plaintext[-8:]})
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            chat(priced, plaintext, **{"fake-marker": plaintext[-8:]})
    assert models_status(priced, plaintext) == 429, "every route of the key"
    seen = [q for q in priced.upstream_requests() if plaintext[-8:] in q["query"]]
    assert len(seen) == 1


@pytest.mark.parametrize("limit", ["budget", "tpm"])
def test_a_stream_its_client_cuts_counts_before_the_next_request(priced, limit):
    # Under one request's cost, under one request's tokens: only the cut stream's usage can stop it.
    key_id, plaintext = priced.new_key(**({"budget_eur": 0.01} if limit == "budget" else {"tpm": 15}))
    with client(priced, plaintext, **{"fake-scenario": "hold-stream"}) as api:
        stream = api.chat.completions.create(model="gpt-oss-120b", messages=MESSAGES, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "Hello"
        stream.close()  # the client hangs up mid-stream

    [row] = priced.usage_rows(key_id)  # written after the gateway counted it
    assert not row.complete and row.prompt_tokens == 21 and row.cost_eur >= 0.021
    refused = refusal(priced, plaintext)
    if limit == "budget":
        assert refused.code == "insufficient_quota"
    else:
        assert (refused.code, refused.type) == ("rate_limit_exceeded", "tokens")
        assert "per-key token limit: 15 tokens per minute" in refused.body["message"]


def test_concurrent_requests_overshoot_by_at_most_the_requests_in_flight(priced):
    """N clients, each sending until refused: at least ceil(B/c) requests pass, at most N - 1 more,
    and the spend ends below B + N c, however the requests interleave."""
    n, budget = 4, 0.1
    key_id, plaintext = priced.new_key(budget_eur=budget)
    headers = {"authorization": f"Bearer {plaintext}"}
    # Each answer takes a moment upstream, so that requests overlap as they would in production.
    params = {"fake-scenario": "slow", "fake-delay-s": "0.2"}
    body = {"model": "gpt-oss-120b", "messages": MESSAGES}

    async def worker(client: httpx.AsyncClient) -> int:
        passed = 0
        while True:
            r = await client.post("/v1/chat/completions", headers=headers, params=params, json=body)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "insufficient_quota"
                return passed
            assert r.status_code == 200, r.text
            passed += 1

    async def run() -> int:
        async with httpx.AsyncClient(base_url=priced.url, timeout=30) as client:
            return sum(await asyncio.gather(*[worker(client) for _ in range(n)]))

    passed = asyncio.run(run())
    least = math.ceil(budget / CHAT)
    assert least <= passed <= least + n - 1
    rows = priced.usage_rows(key_id, count=passed + n)
    assert sum(r.cost_eur for r in rows) < budget + n * CHAT


def test_a_budget_set_live_counts_what_was_spent_before_it(priced):
    key_id, plaintext = priced.new_key()
    chat(priced, plaintext)
    chat(priced, plaintext)  # 0.074 spent, no budget yet
    keys.update(key_id, budget_eur=0.05)
    procs.wait_until(lambda: models_status(priced, plaintext) == 429, timeout=10)
    keys.update(key_id, budget_eur=0.08)
    procs.wait_until(lambda: models_status(priced, plaintext) == 200, timeout=10)
    assert requests_until_refused(priced, plaintext) == 1  # 0.111 then
    keys.update(key_id, budget_period="day")  # the same requests were all made today
    procs.wait_until(lambda: "daily budget" in refusal(priced, plaintext).body["message"], timeout=10)
    assert f"It resets at {period_end('day')}" in refusal(priced, plaintext).body["message"]


def test_the_global_budget_covers_every_key_and_changes_live(start_gateway):
    gateway = start_gateway(**WIDE)
    gateway.use_database()
    prices.set_price("gpt-oss-120b", **PRICE)
    _, first = gateway.new_key()
    _, second = gateway.new_key(budget_eur=100.0)
    chat(gateway, first)
    chat(gateway, first)  # 0.074 spent by the first key
    spend.save_global(spend.GlobalSpend(budget_eur=0.05, budget_period="week"))
    gateway.use_database()
    procs.wait_until(lambda: models_status(gateway, second) == 429, timeout=10)
    refused = refusal(gateway, second)
    assert refused.code == "insufficient_quota"
    assert "The gateway's weekly budget of 0.05 EUR is used up" in refused.body["message"]
    assert f"It resets at {period_end('week')}" in refused.body["message"]
    assert refusal(gateway, first).code == "insufficient_quota"
    spend.save_global(spend.GlobalSpend())
    procs.wait_until(lambda: models_status(gateway, second) == 200, timeout=10)
    chat(gateway, first)


def test_spend_survives_a_restart(upstream, tmp_path):
    data_dir = tmp_path / "data"
    gateway = Gateway(procs.start_gateway(data_dir, upstream.port, **WIDE), data_dir, upstream.port)
    try:
        gateway.use_database()
        prices.set_price("gpt-oss-120b", **PRICE)
        key_id, plaintext = gateway.new_key(budget_eur=0.1)
        chat(gateway, plaintext)
        chat(gateway, plaintext)  # 0.074 of 0.1
    finally:
        assert gateway.stop() == 0  # a graceful stop writes every usage row
    gateway = Gateway(procs.start_gateway(data_dir, upstream.port, **WIDE), data_dir, upstream.port)
    try:
        assert requests_until_refused(gateway, plaintext) == 1
        gateway.use_database()
        assert Usage.select().where(Usage.key_id == key_id, Usage.status == 200).count() >= 2
    finally:
        gateway.stop()
