"""The hot path of spend control reads no database: budgets, model lists and token limits are
decided, and each answer counted, with the database gone (the addon's hooks in-process)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow
from peewee import OperationalError

from addons.gateway import Gateway
from storage import config, keys, prices
from storage.models import database

CHAT_ANSWER = json.dumps(
    {"model": "gpt-oss-120b", "usage": {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29}}
).encode()


@pytest.fixture
def addon(tmp_path):
    settings = config.load({"DATA_DIR": str(tmp_path), "API_KEYS_FILE": str(tmp_path / "none.json")})

    async def loaded():
        gateway = Gateway(settings)
        with taddons.context(gateway):
            yield gateway

    loop = asyncio.new_event_loop()
    generator = loaded()
    gateway = loop.run_until_complete(generator.__anext__())
    gateway.loop = loop
    yield gateway
    gateway.done()
    loop.run_until_complete(generator.aclose())
    loop.close()


def without_database(tmp_path) -> None:
    """Every query from here on fails: the database is bound to a file that cannot be opened."""
    database.init(str(tmp_path / "no such folder" / "gateway.db"))
    with pytest.raises(OperationalError):
        database.execute_sql("SELECT 1")


def chat(addon: Gateway, plaintext: str, model: str = "gpt-oss-120b") -> http.HTTPFlow:
    """One chat through the hooks, the upstream's answer played by hand."""
    flow = tflow.tflow()
    flow.request.path, flow.request.method = "/v1/chat/completions", "POST"
    flow.request.headers["authorization"] = f"Bearer {plaintext}"
    flow.request.content = json.dumps({"model": model, "messages": []}).encode()

    async def hooks():  # the upstream timer needs the running loop
        addon.requestheaders(flow)
        addon.request(flow)
        if flow.response is None:  # forwarded: the upstream answers
            flow.response = http.Response.make(200, CHAT_ANSWER, {"content-type": "application/json"})
        addon.responseheaders(flow)
        addon.response(flow)

    addon.loop.run_until_complete(hooks())
    return flow


def test_budget_models_and_token_limit_are_decided_without_the_database(addon, tmp_path):
    prices.set_price("gpt-oss-120b", input_per_mtok=1000.0, output_per_mtok=2000.0)  # 0.037 a chat
    key, plaintext = keys.create_key("t", budget_eur=0.05, models=["gpt-oss-120b"], tpm=100)
    addon.live.refresh()
    without_database(tmp_path)

    first = chat(addon, plaintext)
    assert first.response.status_code == 200 and first.response.headers["x-ratelimit-limit-tokens"] == "100"
    assert addon.quota.spend.of_key(key.key_id, "month", time.time()) == pytest.approx(0.037)
    assert chat(addon, plaintext, model="gemma-3-27b").response.status_code == 403
    assert chat(addon, plaintext).response.status_code == 200  # crosses the budget: 0.074
    over = chat(addon, plaintext)
    assert over.response.status_code == 429
    assert json.loads(over.response.content)["error"]["code"] == "insufficient_quota"
    assert [f.status for f in addon.writer._pending] == [200, 403, 200, 429], "each one metered"
