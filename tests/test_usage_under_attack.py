"""Usage under attack and faults, against the real gateway and fake upstream processes: a client's
model name cannot cost other clients their rows nor forge log lines, an unwritable database or a
SIGKILL loses no row, and streams cut at shutdown are metered. (docs/security.md, "Tried as an
attacker"; scripts/attack_usage.py measures the same at a higher rate.)
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from storage.models import ApiKey, DailyUsage, Usage
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


@contextlib.contextmanager
def write_lock(gateway: Gateway):
    """Another process holding the database's write lock (as the CLI or a backup could)."""
    conn = sqlite3.connect(gateway.data_dir / "gateway.db", isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


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
    assert status == 200 and body["database"] == "ok" and body["usage"]["lost"] == 0


def test_a_row_the_database_refuses_is_lost_alone_and_counted(gateway):
    # A row that fails on its own, whatever the cause (here a trigger refuses one model name):
    # its batch is split until it is found, and only it is dropped.
    key_id, key = gateway.new_key("poisoned batch")
    conn = sqlite3.connect(gateway.data_dir / "gateway.db", timeout=30)
    conn.execute(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON usage WHEN NEW.model = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    try:
        lost_before = health(gateway)[1]["usage"]["lost"]
        requests = [(key, chat(f"model-{i}")) for i in range(60)]
        requests.insert(30, (key, chat("poison")))
        with write_lock(gateway):  # all 61 rows wait, then go into the same batch
            assert set(post_all(gateway, requests)) == {200}
        rows = gateway.usage_rows(key_id, count=60)
        assert sorted(row.model for row in rows) == sorted(f"model-{i}" for i in range(60))
        procs.wait_until(lambda: health(gateway)[1]["usage"]["lost"] == lost_before + 1)
    finally:
        conn.execute("DROP TRIGGER refuse_poison")
        conn.commit()
        conn.close()
    [lost_line] = procs.wait_until(  # logged at most once a second
        lambda: [line for line in gateway.proc.log().splitlines() if "usage row(s) lost" in line]
    )
    assert "a usage row could not be stored (IntegrityError)" in lost_line
    assert "poison" not in lost_line and "refused" not in lost_line, "what it held is not logged"


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


def test_rows_wait_out_a_locked_database_and_all_arrive(gateway):
    # Held longer than the writer's old three attempts of five seconds each.
    key_id, key = gateway.new_key("locked out")
    lost_before = health(gateway)[1]["usage"]["lost"]
    with write_lock(gateway):
        locked_at = time.monotonic()
        assert set(post_all(gateway, [(key, chat("gpt-oss-120b"))] * 50)) == {200}
        procs.wait_until(lambda: health(gateway)[1]["usage"]["waiting"] >= 50)
        status, body = health(gateway)
        assert status == 200, "the gateway still serves: degraded, not down"
        assert body["status"] == "degraded" and body["database"] == "not writable"
        time.sleep(max(0.0, 18 - (time.monotonic() - locked_at)))
    assert len(gateway.usage_rows(key_id, count=50, timeout=20)) == 50
    procs.wait_until(lambda: health(gateway)[1]["status"] == "ok")
    assert health(gateway)[1]["usage"] == {"waiting": 0, "journaled": 0, "lost": lost_before}


def read_stream(gateway: Gateway, key: str, seen: list, delay_ms: int) -> None:
    params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": str(delay_ms)}
    try:
        body, headers = chat("gpt-oss-120b", stream=True), {"authorization": f"Bearer {key}"}
        with httpx.stream("POST", gateway.url + CHAT, content=body, params=params, headers=headers,
                          timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    seen.append(line)
    except httpx.HTTPError:
        pass  # cut by the test


def start_streams(gateway: Gateway, keys: list[str], delay_ms: int) -> tuple[list[list], list]:
    """Streams of 10 events, one each `delay_ms`; returned once each has seen two (and usage)."""
    seen: list[list] = [[] for _ in keys]
    threads = [threading.Thread(target=read_stream, args=(gateway, key, s, delay_ms))
               for key, s in zip(keys, seen, strict=True)]
    for t in threads:
        t.start()
    procs.wait_until(lambda: all(len(s) >= 2 for s in seen), timeout=20)  # each has reported usage
    return seen, threads


def test_sigkill_loses_neither_finished_rows_nor_running_streams(start_gateway):
    gateway = start_gateway(**WIDE)
    plain_id, plain = gateway.new_key("plain")
    streams = [gateway.new_key(f"stream {i}") for i in range(5)]
    restarted = None
    try:
        seen, threads = start_streams(gateway, [key for _, key in streams], delay_ms=2000)
        with write_lock(gateway):  # finished rows cannot reach the database before the kill
            assert set(post_all(gateway, [(plain, chat(f"req-{i}")) for i in range(100)])) == {200}
            procs.wait_until(lambda: health(gateway)[1]["usage"]["waiting"] >= 100)
            [running] = (gateway.data_dir / "usage-journal").glob("*/running.jsonl")
            procs.wait_until(lambda: running.read_bytes().count(b"\n") == 5)  # a window has passed
            gateway.proc.signal(signal.SIGKILL)
            gateway.proc.popen.wait(10)
        for t in threads:
            t.join(30)
        restarted = Gateway(procs.start_gateway(gateway.data_dir, gateway.upstream_port, **WIDE),
                            gateway.data_dir, gateway.upstream_port)
        rows = restarted.usage_rows(plain_id, count=100)
        assert sorted(row.model for row in rows) == sorted(f"req-{i}" for i in range(100)), "each once"
        for key_id, _ in streams:
            [row] = restarted.usage_rows(key_id)
            assert row.streamed and not row.complete, "cut by the kill: interrupted"
            assert row.prompt_tokens == 21 and row.completion_tokens >= 2, "with the last usage seen"
            assert row.cost_eur > 0
    finally:
        if restarted:
            restarted.stop()


def test_streams_running_at_the_shutdown_timeout_are_metered_as_interrupted(start_gateway):
    gateway = start_gateway(SHUTDOWN_TIMEOUT="1", **WIDE)
    streams = [gateway.new_key(f"long stream {i}") for i in range(3)]
    seen, threads = start_streams(gateway, [key for _, key in streams], delay_ms=1500)
    gateway.proc.signal(signal.SIGTERM)
    assert gateway.proc.popen.wait(30) == 0
    for t in threads:
        t.join(30)
    assert all(not s or s[-1] != "data: [DONE]" for s in seen), "cut off, not finished"
    gateway.use_database()
    for key_id, _ in streams:
        [row] = Usage.select().where(Usage.key_id == key_id)
        assert row.streamed and not row.complete
        assert row.prompt_tokens == 21 and row.completion_tokens >= 2 and row.cost_eur > 0
    assert "cut off" in gateway.proc.log()
