"""Usage under attack, against the real gateway and fake upstream processes: a client's model
name cannot cost other clients their rows, forge log lines or reach the operator's terminal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from storage.models import ApiKey, DailyUsage
from storage.untrusted import INVALID_MODEL, MAX_MODEL_CHARS, TRUNCATED
from tests import procs
from tests.conftest import Gateway

WIDE = {
    "RATE_LIMIT_REQUESTS": "100000",
    "RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "100000",
    "MAX_BODY_MB": "4",
}
CHAT = "/v1/chat/completions"
SURROGATE_BODY = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
# A newline that would start a forged access line, and escape sequences for the operator's terminal.
FORGED = "gpt\n2030-01-01 00:00:00,000 INFO gateway: POST /v1/chat/completions 200 key=forged"
TERMINAL = "\x1b]0;owned\x07\x1b[2J"


def chat(model: str, stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return json.dumps(body).encode()


def post(gateway: Gateway, key: str, body: bytes, **params) -> int:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    r = httpx.post(gateway.url + CHAT, content=body, headers=headers, params=params, timeout=30)
    return r.status_code


def post_all(gateway: Gateway, requests: list[tuple[str, bytes]]) -> list[int]:
    """Send (key, body) requests 20 at a time: they finish in the same flush windows."""
    with ThreadPoolExecutor(20) as pool:
        return list(pool.map(lambda r: post(gateway, *r), requests))


def health(gateway: Gateway) -> tuple[int, dict]:
    r = procs.health(gateway.proc.port)
    return r.status_code, r.json()


@pytest.fixture(scope="module")
def gateway(start_gateway) -> Gateway:
    return start_gateway(**WIDE)


def test_lone_surrogate_model_names_cost_no_other_row(gateway):
    victim_id, victim = gateway.new_key("victim")
    attacker_id, attacker = gateway.new_key("attacker")
    requests = [(victim, chat("gpt-oss-120b"))] * 100
    for i in range(0, 100, 10):
        requests.insert(i, (attacker, SURROGATE_BODY))
    assert set(post_all(gateway, requests)) == {200}

    assert len(gateway.usage_rows(victim_id, count=100)) == 100
    bad = gateway.usage_rows(attacker_id, count=10)
    assert len(bad) == 10 and {row.model for row in bad} == {INVALID_MODEL}
    status, body = health(gateway)
    assert status == 200 and body["database"] == "ok"


def test_client_strings_are_escaped_in_the_log_and_bounded_in_the_database(gateway):
    key_id, key = gateway.new_key("escapes")
    assert post(gateway, key, chat(FORGED + TERMINAL)) == 200
    assert post(gateway, key, chat("m" * (1 << 20))) == 200
    rows = gateway.usage_rows(key_id, count=2)
    assert rows[0].model == INVALID_MODEL
    assert len(rows[1].model) == MAX_MODEL_CHARS and rows[1].model.endswith(TRUNCATED)

    log = gateway.proc.log_path.read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log
    assert b"\n2030-01-01" not in log, "no forged line"
    assert b"model=gpt\\x0a2030-01-01\\x2000:00:00" in log
    assert max(len(line) for line in log.splitlines()) < 1024


def test_the_cli_escapes_names_and_models_stored_before_they_were_checked(gateway):
    # Rows from before the sanitiser, and a key name from before names were checked.
    key_id, _ = gateway.new_key("old key")
    ApiKey.update(name="old\x1b]0;owned\x07name").where(ApiKey.key_id == key_id).execute()
    DailyUsage.create(day="2026-11-20", key_id=key_id, model=FORGED + TERMINAL, requests=1)
    outputs = []
    since = ["--since", "2026-11-01"]
    for args in (["usage", *since, "--by", "model"], ["usage", *since], ["list"]):
        result = subprocess.run(
            [sys.executable, "scripts/manage_keys.py", *args], cwd=procs.ROOT, capture_output=True,
            env=procs.base_env(DATA_DIR=str(gateway.data_dir)), check=True,
        )
        outputs.append(result.stdout)
    by_model, by_key, listed = outputs
    for out in outputs:
        assert b"\x1b" not in out and b"\x07" not in out and b"\n2030-01-01" not in out
    assert b"gpt\\x0a2030-01-01" in by_model and b"\\x1b[2J" in by_model
    assert b"old\\x1b]0;owned\\x07name" in by_key and b"old\\x1b]0;owned\\x07name" in listed
