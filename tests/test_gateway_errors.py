"""Every bad input gets an exact, OpenAI-shaped error, and the gateway keeps serving."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from storage import keys
from tests import procs


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "mitmproxy" not in r.headers.get("server", "")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "Errno" not in error["message"] and "mitmproxy" not in error["message"]
    return error


def chat(gateway, headers=None, **kwargs) -> httpx.Response:
    body = kwargs.pop("json", {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]})
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers or {}, json=body, timeout=15, **kwargs
    )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_no_key(gateway):
    error = assert_error(chat(gateway), 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer pmg_wrong"},
        {"x-api-key": "pmg_wrong"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer"},
    ],
)
def test_wrong_key(gateway, headers):
    assert_error(chat(gateway, headers), 401, "invalid_api_key")


def test_the_openai_package_sees_an_authentication_error(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="pmg_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"


def test_expired_key(gateway):
    key_id, plaintext = gateway.new_key()
    keys.update(key_id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    gateway.wait_for_key(plaintext, accepted=False)
    error = assert_error(chat(gateway, bearer(plaintext)), 401, "invalid_api_key")
    assert "expired" in error["message"]


def test_revoked_key_is_refused_within_a_second_and_enabled_again(gateway):
    key_id, plaintext = gateway.new_key()
    keys.revoke(key_id)
    gateway.wait_for_key(plaintext, accepted=False)
    assert "revoked" in assert_error(chat(gateway, bearer(plaintext)), 401, "invalid_api_key")["message"]
    keys.enable(key_id)
    gateway.wait_for_key(plaintext, accepted=True)


def test_rotated_key_kills_the_old_secret(gateway):
    key_id, old = gateway.new_key()
    new = keys.rotate(key_id)
    gateway.wait_for_key(new, accepted=True)
    assert_error(chat(gateway, bearer(old)), 401, "invalid_api_key")


def test_malformed_json(gateway, api_key):
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={**bearer(api_key[1]), "content-type": "application/json"},
        content=b'{"model": "gpt-oss-120b", "messages": [',
    )
    assert_error(r, 400, "invalid_json")
    r = httpx.post(f"{gateway.url}/v1/embeddings", headers=bearer(api_key[1]), json=["not", "an", "object"])
    assert_error(r, 400, "invalid_json")


def test_oversized_body_with_content_length(gateway, api_key):
    httpx.post(f"http://127.0.0.1:{gateway.upstream_port}/_fake/reset")
    r = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        headers=bearer(api_key[1]),
        files={"file": ("big.mp3", b"\0" * (3 * 1024 * 1024))},
        data={"model": "whisper-large-v3"},
    )
    assert_error(r, 413, "request_too_large")
    assert not [q for q in gateway.upstream_requests() if q["body_length"] >= 3 * 1024 * 1024]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/audio/transcriptions"])
def test_oversized_chunked_body(gateway, api_key, path):
    def chunks():
        for _ in range(40):
            yield b"\0" * 100_000

    r = httpx.post(f"{gateway.url}{path}", headers=bearer(api_key[1]), content=chunks())
    assert_error(r, 413, "request_too_large")


def test_chunked_upload_within_the_limit_is_metered(gateway, api_key):
    key_id, plaintext = api_key
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-large-v3\r\n--b--\r\n'

    def chunks():
        yield form[:20]
        yield form[20:]

    r = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        content=chunks(),
        headers={**bearer(plaintext), "content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 200
    [row] = gateway.usage_rows(key_id)
    assert (row.request_bytes, row.model) == (len(form), "whisper-large-v3")


def raw_request(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send bytes no HTTP client would send (they normalise paths and refuse bad requests)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_unknown_path(gateway, api_key):
    for path in ("/v2/chat", "/v1/chat/completions/extra", "/admin/%2e%2e/v1/models", "/"):
        assert_error(httpx.get(f"{gateway.url}{path}", headers=bearer(api_key[1])), 404, "not_found")
    for path in (b"/v1/../admin/", b"/admin/../v1/models"):
        head, body = raw_request(
            gateway.proc.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path
        )
        assert head.startswith(b"HTTP/1.1 404") and b'"code": "not_found"' in body


def test_admin_route_without_admin_answers_503(gateway):
    assert_error(httpx.get(f"{gateway.url}/admin/"), 503, "admin_unavailable")


def test_malformed_http_request(gateway):
    head, body = raw_request(gateway.proc.port, b"NONSENSE\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"mitmproxy" not in head.lower()
    assert b'"code": "bad_request"' in body


@pytest.fixture(scope="module")
def dead_port():
    return procs.free_port()  # nothing listens there


def test_upstream_down(start_gateway, dead_port):
    gateway = start_gateway(upstream_port=dead_port)
    gateway.use_database()
    key, plaintext = keys.create_key("down")
    procs.wait_until(lambda: chat(gateway, bearer(plaintext)).status_code == 502, timeout=5)
    assert_error(chat(gateway, bearer(plaintext)), 502, "upstream_unavailable")
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 503 and health.json()["upstream"] == "unreachable"
    [row, *_] = gateway.usage_rows(key.key_id)
    assert row.status == 502 and not row.complete


def test_upstream_slow(start_gateway):
    gateway = start_gateway(UPSTREAM_TIMEOUT="1")
    key_id, plaintext = gateway.new_key()
    r = chat(gateway, bearer(plaintext), params={"fake-scenario": "slow", "fake-delay-s": "10"})
    assert_error(r, 504, "upstream_timeout")
    [row] = gateway.usage_rows(key_id)
    assert row.status == 504
    assert chat(gateway, bearer(plaintext)).status_code == 200, "the gateway keeps serving"
