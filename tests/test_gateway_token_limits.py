"""Tokens per minute through the real gateway: charged with each answer's tokens, streams alike,
per key and global, and OpenAI's x-ratelimit-*-tokens headers on every answer to such a key."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from storage import spend
from tests import procs
from tests.conftest import Gateway

WIDE = {
    "RATE_LIMIT_REQUESTS": "100000",
    "RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "100000",
}
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
MESSAGES = [{"role": "user", "content": "hi"}]
UPSTREAM_ERROR = {"fake-scenario": "error"}  # the fake upstream answers 400


@pytest.fixture(scope="module")
def gateway(start_gateway) -> Gateway:
    return start_gateway(**WIDE)


def chat(gateway: Gateway, plaintext: str, stream: bool = False) -> httpx.Headers:
    """One chat (29 tokens, streamed or not) through the openai SDK; the answer's headers."""
    with OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-oss-120b", messages=MESSAGES, stream=stream
        )
        answer = raw.parse()
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in answer) == "Hello there! How can I help?"
    return raw.headers


def refused(gateway: Gateway, plaintext: str, stream: bool = False) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as e:
        chat(gateway, plaintext, stream)
    return e.value


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_is_admitted_while_its_bucket_is_above_zero(gateway, stream):
    # 40 tokens a minute: 29, then 11 left (admitted), then 18 below zero for about 27 s.
    _, plaintext = gateway.new_key(tpm=40)
    first = chat(gateway, plaintext, stream)
    assert first["x-ratelimit-limit-tokens"] == "40"
    assert chat(gateway, plaintext, stream)["x-ratelimit-limit-tokens"] == "40"
    error = refused(gateway, plaintext, stream)
    assert (error.code, error.type) == ("rate_limit_exceeded", "tokens")
    assert "per-key token limit: 40 tokens per minute" in error.body["message"]
    headers = error.response.headers
    assert headers["x-ratelimit-remaining-tokens"] == "0" and headers["x-ratelimit-limit-tokens"] == "40"
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-reset-tokens"].endswith("s")
    _, other = gateway.new_key(tpm=40)
    chat(gateway, other, stream)  # a bucket per key


def test_token_headers_come_on_every_answer_to_a_key_with_a_token_limit(gateway):
    key_id, plaintext = gateway.new_key(tpm=100_000, models=["gpt-oss-120b"])
    chat_body = {"model": "gpt-oss-120b", "messages": MESSAGES}
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {plaintext}"}) as api:
        answers = {
            "chat": api.post("/v1/chat/completions", json=chat_body),
            "stream": api.post("/v1/chat/completions", json={**chat_body, "stream": True}),
            "models": api.get("/v1/models"),
            "one model": api.get("/v1/models/gpt-oss-120b"),
            "model not found": api.get("/v1/models/gemma-3-27b"),
            "model not allowed": api.post("/v1/chat/completions", json={**chat_body, "model": "gemma-3-27b"}),
            "bad json": api.post("/v1/chat/completions", content=b"{"),
            "upstream error": api.post("/v1/chat/completions", params=UPSTREAM_ERROR, json=chat_body),
        }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "chat": 200, "stream": 200, "models": 200, "one model": 200, "model not found": 404,
        "model not allowed": 403, "bad json": 400, "upstream error": 400,
    }
    for name, r in answers.items():
        assert r.headers.get("x-ratelimit-limit-tokens") == "100000", name
        assert 0 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 100_000, name
        assert r.headers["x-ratelimit-reset-tokens"][-1] == "s", name

    _, budgeted = gateway.new_key(tpm=100_000, budget_eur=0.0001)  # under one chat's cost
    chat(gateway, budgeted)
    over = refused(gateway, budgeted)
    assert over.code == "insufficient_quota" and over.response.headers["x-ratelimit-limit-tokens"] == "100000"

    _, plain = gateway.new_key()
    headers = chat(gateway, plain)
    assert not [h for h in TOKEN_HEADERS if h in headers], "no token limit, no token headers"
    assert "x-ratelimit-limit-requests" in headers


def test_the_global_token_limit_covers_every_key_and_changes_live(start_gateway):
    gateway = start_gateway(**WIDE)
    _, first = gateway.new_key()
    _, second = gateway.new_key(tpm=100_000)
    spend.save_global(spend.GlobalSpend(tpm=40))

    def applied() -> bool:
        r = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {first}"})
        return r.headers.get("x-ratelimit-limit-tokens") == "40"

    procs.wait_until(applied, timeout=10)
    chat(gateway, first)  # 11 left
    assert chat(gateway, second)["x-ratelimit-limit-tokens"] == "40", "the tighter limit is shown"
    for key in (first, second):
        error = refused(gateway, key)
        assert "global token limit: 40 tokens per minute" in error.body["message"]
    spend.save_global(spend.GlobalSpend())
    gateway.use_database()
    procs.wait_until(lambda: not applied(), timeout=10)
    chat(gateway, first)
