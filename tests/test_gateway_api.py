"""The gateway as clients use it: the official openai package and httpx against real processes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from openai import OpenAI

CHAT_PRICE = 5.00 / 1_000_000


def client(gateway, api_key: str, **fake_controls: str) -> OpenAI:
    """An OpenAI client; `fake_controls` steer the fake upstream through the query string."""
    return OpenAI(
        base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0, default_query=fake_controls or None
    )


def test_health_answers_without_a_key(gateway):
    r = httpx.get(f"{gateway.url}/health")
    assert r.status_code == 200
    assert r.json()["upstream"] == "ok" and r.json()["database"] == "ok"
    assert "server" not in r.headers


def test_chat_completion_is_metered(gateway, api_key):
    key_id, plaintext = api_key
    completion = client(gateway, plaintext).chat.completions.create(
        model="gpt-oss-120b", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.choices[0].message.content == "Hello there! How can I help?"

    [row] = gateway.usage_rows(key_id)
    assert (row.endpoint, row.model, row.status) == ("/v1/chat/completions", "gpt-oss-120b", 200)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (21, 8, 29)
    assert row.cost_eur == pytest.approx(29 * CHAT_PRICE)
    assert not row.streamed and row.complete and not row.default_price
    assert row.request_bytes > 0


def test_rate_limit_headers_on_success(gateway, api_key):
    r = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {api_key[1]}"})
    assert r.status_code == 200
    assert int(r.headers["x-ratelimit-limit-requests"]) > 0
    assert int(r.headers["x-ratelimit-remaining-requests"]) >= 0
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_client_keys_never_reach_the_upstream(gateway, api_key):
    httpx.post(f"{gateway.url}/_fake/reset")  # an unknown path for the gateway: 404, not forwarded
    headers = {"authorization": f"Bearer {api_key[1]}", "x-api-key": api_key[1]}
    r = httpx.post(
        f"{gateway.url}/v1/embeddings", headers=headers, json={"model": "qwen3-embedding-4b", "input": "x"}
    )
    assert r.status_code == 200
    forwarded = [q for q in gateway.upstream_requests() if q["path"] == "/v1/embeddings"][-1]
    assert "authorization" not in forwarded["headers"]
    assert "x-api-key" not in forwarded["headers"]
    assert api_key[1] not in json.dumps(forwarded)


def test_stream_without_usage_request_gets_usage_recorded_and_hidden(gateway, api_key):
    """Privatemode's stream: cumulative usage in every chunk; the last one counts, not the sum."""
    key_id, plaintext = api_key
    stream = client(gateway, plaintext).chat.completions.create(
        model="gpt-oss-120b", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there! How can I help?"
    assert all(c.choices for c in chunks), "the usage-only chunk the client did not ask for is removed"

    [row] = gateway.usage_rows(key_id)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (21, 8, 16)
    assert row.streamed and row.complete
    sent = [q for q in gateway.upstream_requests() if q["path"] == "/v1/chat/completions"][-1]
    assert sent["json"]["stream_options"] == {"include_usage": True}


def test_stream_from_plain_openai_server_asks_for_usage(gateway, api_key):
    """An upstream that sends usage only when asked: the gateway asks, and hides the answer."""
    key_id, plaintext = api_key
    stream = client(gateway, plaintext, **{"fake-scenario": "include-usage"}).chat.completions.create(
        model="gpt-oss-120b", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    [row] = gateway.usage_rows(key_id)
    assert (row.prompt_tokens, row.completion_tokens) == (21, 8)


def test_stream_with_usage_requested_keeps_the_usage_chunk(gateway, api_key):
    key_id, plaintext = api_key
    stream = client(gateway, plaintext, **{"fake-scenario": "include-usage"}).chat.completions.create(
        model="gpt-oss-120b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 29
    [row] = gateway.usage_rows(key_id)
    assert (row.prompt_tokens, row.completion_tokens) == (21, 8)


def test_embeddings_are_priced_per_model(gateway, api_key):
    key_id, plaintext = api_key
    result = client(gateway, plaintext).embeddings.create(model="qwen3-embedding-4b", input="hello")
    assert len(result.data[0].embedding) == 3
    [row] = gateway.usage_rows(key_id)
    assert (row.model, row.prompt_tokens, row.total_tokens) == ("qwen3-embedding-4b", 13, 13)
    assert row.cost_eur == pytest.approx(13 * 0.13 / 1_000_000)


def test_transcription_upload_is_billed_by_size(gateway, api_key, tmp_path):
    key_id, plaintext = api_key
    audio = tmp_path / "clip.mp3"
    audio.write_bytes(b"\x00\x01" * 500_000)  # 1 MB
    with audio.open("rb") as f:
        result = client(gateway, plaintext).audio.transcriptions.create(model="whisper-large-v3", file=f)
    assert result.text == "Hello, this is a test recording."
    [row] = gateway.usage_rows(key_id)
    assert row.endpoint == "/v1/audio/transcriptions" and row.audio_seconds == 35
    assert 1_000_000 < row.request_bytes < 1_001_000  # the multipart body: file plus form fields
    assert row.cost_eur > 0
    forwarded = [q for q in gateway.upstream_requests() if q["path"] == "/v1/audio/transcriptions"][-1]
    assert forwarded["body_length"] == row.request_bytes


def test_model_list(gateway, api_key):
    key_id, plaintext = api_key
    models = client(gateway, plaintext).models.list()
    assert "whisper-large-v3" in [m.id for m in models.data]
    [row] = gateway.usage_rows(key_id)
    assert (row.endpoint, row.status, row.total_tokens, row.cost_eur) == ("/v1/models", 200, 0, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_with_x_api_key(gateway, api_key, stream):
    key_id, plaintext = api_key
    body = {"model": "gpt-oss-120b", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(
        f"{gateway.url}/v1/messages", headers={"x-api-key": plaintext}, json={**body, "stream": stream}
    )
    assert r.status_code == 200
    [row] = gateway.usage_rows(key_id)
    assert (row.prompt_tokens, row.completion_tokens, row.streamed) == (25, 15, stream)


def test_unstructured_route_is_forwarded(gateway, api_key):
    r = httpx.post(
        f"{gateway.url}/unstructured/general/v0/general",
        headers={"authorization": f"Bearer {api_key[1]}"},
        files={"files": ("a.txt", b"hello")},
    )
    assert r.status_code == 200 and r.json()[0]["type"] == "Title"


def test_unknown_model_uses_the_default_price_and_is_flagged(gateway, api_key):
    key_id, plaintext = api_key
    client(gateway, plaintext).chat.completions.create(
        model="brand-new-model", messages=[{"role": "user", "content": "x"}]
    )
    [row] = gateway.usage_rows(key_id)
    assert row.default_price and row.cost_eur == pytest.approx(29 * CHAT_PRICE)


def test_upstream_errors_pass_through_and_are_counted(gateway, api_key):
    key_id, plaintext = api_key
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {plaintext}"},
        params={"fake-scenario": "error"},
        json={"model": "gpt-5", "messages": []},
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == "model not found: gpt-5"
    [row] = gateway.usage_rows(key_id)
    assert (row.status, row.cost_eur) == (400, 0)


def test_log_lines_carry_no_key_and_no_content(gateway, api_key):
    key_id, plaintext = api_key
    client(gateway, plaintext).chat.completions.create(
        model="gpt-oss-120b", messages=[{"role": "user", "content": "secret prompt"}]
    )
    gateway.usage_rows(key_id)
    log = gateway.proc.log()
    assert f"key={key_id}" in log
    for secret in (plaintext, "secret prompt", "Hello there", "Bearer"):
        assert secret not in log


@pytest.fixture(scope="module")
def admin_stand_in():
    """A plain HTTP server on the admin's port that answers with the headers it received."""

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_admin_route_gets_forwarding_headers_set_by_the_gateway(start_gateway, admin_stand_in):
    gateway = start_gateway(ADMIN_PORT=str(admin_stand_in))
    spoofed = {"x-forwarded-for": "6.6.6.6", "x-forwarded-host": "evil.example", "host": "gw.example.com"}
    r = httpx.get(f"{gateway.url}/admin/keys?x=1", headers=spoofed)
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/admin/keys?x=1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == "gw.example.com"
    assert seen["headers"]["x-forwarded-proto"] == "http"


def test_upstream_gets_its_own_host_header(gateway, api_key):
    r = httpx.get(
        f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {api_key[1]}", "host": "gw.example"}
    )
    assert r.status_code == 200
    forwarded = [q for q in gateway.upstream_requests() if q["path"] == "/v1/models"][-1]
    assert forwarded["headers"]["host"] == f"127.0.0.1:{gateway.upstream_port}"
