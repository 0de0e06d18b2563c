"""What reaches the upstream: only the headers an API call needs, nothing that identifies a client.

privatemode-proxy passes request headers on to Privatemode, outside the VM.
"""

from __future__ import annotations

import http.client
import socket

import anthropic
import httpx
import pytest
from openai import OpenAI

from storage import keys

IDENTIFYING = {
    "cookie": "session=abc123",
    "x-forwarded-for": "198.51.100.7",
    "x-real-ip": "198.51.100.7",
    "forwarded": "for=198.51.100.7;proto=https",
    "true-client-ip": "198.51.100.7",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0 on Alice's laptop",
    "referer": "https://intranet.example/secret-project",
    "x-request-id": "trace-0042",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "x-my-team": "legal",
    "accept-language": "de-CH",
    "proxy-authorization": "Basic c2VjcmV0",
}


def last_upstream(gateway, path: str) -> dict:
    return [q for q in gateway.upstream_requests() if q["path"] == path][-1]["headers"]


def test_identifying_headers_stay_in_the_vm(gateway, api_key):
    _, plaintext = api_key
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {plaintext}", **IDENTIFYING, "openai-beta": "assistants=v2"},
        json={"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    forwarded = last_upstream(gateway, "/v1/chat/completions")
    assert not set(IDENTIFYING) & set(forwarded), forwarded
    assert "authorization" not in forwarded
    assert forwarded["content-type"] == "application/json"
    assert forwarded["openai-beta"] == "assistants=v2"
    assert set(forwarded) <= {"host", "content-type", "content-length", "accept", "connection", "openai-beta"}


def test_the_sdks_headers_that_matter_pass_and_their_telemetry_does_not(gateway, api_key):
    _, plaintext = api_key
    OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0).embeddings.create(
        model="qwen3-embedding-4b", input="x"
    )
    forwarded = last_upstream(gateway, "/v1/embeddings")
    assert not [name for name in forwarded if name.startswith("x-stainless")]
    assert "user-agent" not in forwarded
    client = anthropic.Anthropic(base_url=gateway.url, api_key=plaintext, max_retries=0)
    client.messages.create(
        model="gpt-oss-120b",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    forwarded = last_upstream(gateway, "/v1/messages")
    assert forwarded["anthropic-version"] and forwarded["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "x-api-key" not in forwarded and "user-agent" not in forwarded


def test_a_multipart_upload_keeps_its_boundary(gateway, api_key):
    _, plaintext = api_key
    r = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {plaintext}", "cookie": "x=1"},
        files={"file": ("a.wav", b"RIFF" + b"\0" * 2000, "audio/wav")},
        data={"model": "whisper-large-v3"},
    )
    assert r.status_code == 200, r.text
    forwarded = last_upstream(gateway, "/v1/audio/transcriptions")
    assert forwarded["content-type"].startswith("multipart/form-data; boundary=")
    assert "cookie" not in forwarded


@pytest.fixture(scope="module")
def behind_proxy(start_gateway):
    """FORCE_HTTPS without TLS of its own: TLS ends at the operator's proxy in front."""
    gateway = start_gateway(FORCE_HTTPS="true", TRUST_PROXY="true", RATE_LIMIT_REQUESTS="100000")
    gateway.use_database()
    _, plaintext = keys.create_key("behind a proxy")  # no probe: plain http is refused here
    return gateway, plaintext


@pytest.mark.parametrize(
    ("proto", "status"), [("https", 200), ("http, https", 200), ("http", 403), (None, 403)]
)
def test_a_trusted_proxys_forwarded_proto_counts_as_https(behind_proxy, proto, status):
    gateway, plaintext = behind_proxy
    headers = {"authorization": f"Bearer {plaintext}"} | ({"x-forwarded-proto": proto} if proto else {})
    r = httpx.get(f"{gateway.url}/v1/models", headers=headers)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["error"]["code"] == "https_required"


def test_forwarded_proto_is_ignored_without_trust_proxy(start_gateway):
    gateway = start_gateway(FORCE_HTTPS="true", RATE_LIMIT_REQUESTS="100000")
    r = httpx.get(f"{gateway.url}/v1/models", headers={"x-forwarded-proto": "https"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "https_required"


def test_an_absolute_form_request_line_goes_upstream_in_origin_form(gateway, api_key):
    _, plaintext = api_key
    # http.client writes the target as given: an absolute-form request line.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.proc.port, timeout=10)
    target = "http://evil.example:1234/v1/models"
    conn.request("GET", target, headers={"authorization": f"Bearer {plaintext}"})
    assert conn.getresponse().status == 200
    conn.close()
    forwarded = [q for q in gateway.upstream_requests() if q["path"] == "/v1/models"][-1]
    assert forwarded["target"] == "/v1/models"
    assert forwarded["headers"]["host"] == f"127.0.0.1:{gateway.upstream_port}"
    assert "evil.example" not in str(forwarded)


@pytest.mark.parametrize("path", ["/unstructured/%252e%252e/v1/models", "/unstructured/general/%252Fadmin"])
def test_a_doubly_encoded_path_is_refused_not_forwarded(gateway, api_key, path):
    _, plaintext = api_key
    r = httpx.post(f"{gateway.url}{path}", headers={"authorization": f"Bearer {plaintext}"}, content=b"x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # The fake upstream also records the health probe's GET /: look for this path only.
    assert not [q for q in gateway.upstream_requests() if q["target"].startswith("/unstructured/")]


def test_connection_close_closes_the_clients_connection(gateway, api_key):
    # A client that reads until the connection closes must not wait forever.
    _, plaintext = api_key
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=10) as s:
        s.sendall(
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {plaintext}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(65536):  # a socket.timeout here is the bug
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
