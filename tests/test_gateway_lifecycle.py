"""Streams that end badly, graceful stops, and keys arriving from API_KEYS_FILE while running."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from storage.models import ApiKey
from tests import procs

# Steers the fake upstream; sent in the query string, which the gateway forwards (headers it filters).
HOLD = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "300"}
STREAM = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def stream_request(gateway, key: str, fake: dict, read_events: int | None = None) -> list[bytes]:
    """Stream a chat completion; stop reading (and hang up) after `read_events` SSE events."""
    events: list[bytes] = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=STREAM,
        timeout=30,
        headers={"authorization": f"Bearer {key}"},
        params=fake,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(line.encode())
                if read_events is not None and len(events) >= read_events:
                    break
    return events


def test_client_disconnect_mid_stream_leaves_an_interrupted_row(gateway, api_key):
    key_id, plaintext = api_key
    events = stream_request(gateway, plaintext, HOLD, read_events=3)
    assert len(events) == 3
    [row] = gateway.usage_rows(key_id)
    assert row.streamed and not row.complete
    assert (row.prompt_tokens, row.completion_tokens) == (21, 3), "the last usage seen before the hang-up"
    assert row.cost_eur > 0


def test_upstream_breaking_off_leaves_an_interrupted_row(gateway, api_key):
    key_id, plaintext = api_key
    try:
        stream_request(gateway, plaintext, {"fake-scenario": "break"})
    except httpx.RemoteProtocolError:
        pass  # the client sees the broken stream too
    [row] = gateway.usage_rows(key_id)
    assert not row.complete and row.completion_tokens == 2


def test_sigterm_finishes_streams_and_loses_no_row(start_gateway):
    gateway = start_gateway(SHUTDOWN_TIMEOUT="20")
    key_id, plaintext = gateway.new_key()
    httpx.post(f"http://127.0.0.1:{gateway.upstream_port}/_fake/reset")  # count this test's streams only
    results: list[list[bytes]] = []
    streams = [
        threading.Thread(target=lambda: results.append(stream_request(gateway, plaintext, HOLD)))
        for _ in range(3)
    ]
    for t in streams:
        t.start()
    procs.wait_until(lambda: gateway_in_flight(gateway) >= 3, timeout=10)
    gateway.proc.signal(signal.SIGTERM)
    for t in streams:
        t.join(30)
    assert gateway.proc.popen.wait(30) == 0
    assert len(results) == 3 and all(r[-1] == b"data: [DONE]" for r in results), "streams ran to the end"
    rows = gateway.usage_rows(key_id, count=3, timeout=1)
    assert all(r.complete and r.completion_tokens == 8 for r in rows)
    assert "stopped" in gateway.proc.log()


def gateway_in_flight(gateway) -> int:
    """Streams the upstream is serving now (not the health probe's GET /, which it also counts)."""
    requests = gateway.upstream_requests()
    return sum(1 for q in requests if q["path"] == "/v1/chat/completions" and q["outcome"] == "pending")


def test_sigterm_on_an_idle_gateway_exits_at_once(start_gateway):
    gateway = start_gateway()
    started = time.monotonic()
    gateway.proc.signal(signal.SIGTERM)
    assert gateway.proc.popen.wait(10) == 0
    assert time.monotonic() - started < 10


def test_keys_file_is_imported_and_reloaded_while_running(start_gateway, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    first = {"key_id": "key_file_1", "api_key": "pmg_from_file_first_0123456789", "name": "n8n"}
    keys_file.write_text(json.dumps({"keys": [first]}))
    gateway = start_gateway(API_KEYS_FILE=str(keys_file))
    gateway.wait_for_key(first["api_key"])

    second = {"key_id": "key_file_2", "api_key": "pmg_from_file_second_0123456789", "name": "zapier"}
    keys_file.write_text(json.dumps({"keys": [{**first, "enabled": False}, second]}))
    gateway.wait_for_key(second["api_key"])
    gateway.wait_for_key(first["api_key"], accepted=False)

    gateway.use_database()
    stored = {k.key_id: k.key_hash for k in ApiKey.select()}
    assert set(stored) >= {"key_file_1", "key_file_2"}
    raw = (gateway.data_dir / "gateway.db").read_bytes() + (gateway.data_dir / "gateway.db-wal").read_bytes()
    assert b"pmg_from_file" not in raw, "plaintext from the file is hashed, never stored"
