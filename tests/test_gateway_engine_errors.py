"""Errors mitmproxy makes itself answer the same on HTTP/1.1 and HTTP/2.

Bad requests, bodies over the limit and unreachable upstreams or admin are answered by mitmproxy's
HTTP layers, not by our hooks, and each protocol has its own code for them there. Whatever the
client speaks, it must get our status, JSON, our server header and an OpenAI-shaped body.
"""

from __future__ import annotations

import socket
import ssl

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme

from addons.engine import SERVER_HEADER
from storage import keys
from tests import procs

PROTOCOLS = ["HTTP/1.1", "HTTP/2"]


@pytest.fixture(scope="module")
def tls_gateway(start_gateway, certificate):
    return start_gateway(**certificate, MAX_BODY_MB="1", RATE_LIMIT_REQUESTS="100000")


@pytest.fixture(scope="module")
def down_gateway(start_gateway, certificate):
    """A gateway whose upstream does not listen."""
    return start_gateway(upstream_port=procs.free_port(), **certificate, RATE_LIMIT_REQUESTS="100000")


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


def client(ca: trustme.CA, protocol: str) -> httpx.Client:
    if protocol == "HTTP/2":
        context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(context)
        return httpx.Client(http2=True, verify=context, timeout=15)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return httpx.Client(verify=context, timeout=15)


def url(gateway, path: str) -> str:
    return f"https://localhost:{gateway.proc.port}{path}"


def assert_engine_error(status: int, headers, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    assert headers["server"] == SERVER_HEADER
    error = httpx.Response(200, content=body).json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "Errno" not in error["message"] and "mitmproxy" not in error["message"]


def check(r: httpx.Response, protocol: str, status: int, code: str) -> None:
    assert r.http_version == protocol
    assert_engine_error(r.status_code, r.headers, r.content, status, code)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_not_running(tls_gateway, ca, protocol):
    with client(ca, protocol) as c:
        check(c.get(url(tls_gateway, "/admin/")), protocol, 503, "admin_unavailable")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upstream_not_listening(down_gateway, ca, protocol):
    down_gateway.use_database()
    _, plaintext = keys.create_key("down")
    headers = {"authorization": f"Bearer {plaintext}"}
    with client(ca, protocol) as c:
        # 401 until the gateway has loaded the new key.
        procs.wait_until(lambda: c.get(url(down_gateway, "/v1/models"), headers=headers).status_code != 401)
        check(c.get(url(down_gateway, "/v1/models"), headers=headers), protocol, 502, "upstream_unavailable")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_body_over_the_limit(tls_gateway, ca, protocol):
    with client(ca, protocol) as c:
        r = c.post(url(tls_gateway, "/v1/embeddings"), content=b"\0" * (2 * 1024 * 1024))
        check(r, protocol, 413, "request_too_large")


def test_malformed_http1_request(tls_gateway, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        socket.create_connection(("127.0.0.1", tls_gateway.proc.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"NONSENSE\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert_engine_error(int(status_line.split()[1]), headers, body, 400, "bad_request")


def test_malformed_http2_request(tls_gateway, ca):
    """A scheme mitmproxy refuses: the nearest HTTP/2 has to a malformed request line."""
    headers, body = raw_h2_request(
        tls_gateway.proc.port,
        ca,
        [(b":method", b"GET"), (b":scheme", b"ftp"), (b":path", b"/v1/models"), (b":authority", b"x")],
    )
    status = int(headers.pop(":status"))
    assert_engine_error(status, headers, body, 400, "bad_request")


def raw_h2_request(port: int, ca: trustme.CA, request_headers) -> tuple[dict[str, str], bytes]:
    """One HTTP/2 request with headers no HTTP client would send; the response's headers and body."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
    )
    headers: dict[str, str] = {}
    body = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        assert s.selected_alpn_protocol() == "h2"
        conn.initiate_connection()
        conn.send_headers(1, request_headers, end_stream=True)
        s.sendall(conn.data_to_send())
        while data := s.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return headers, body
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(f"no response: {event}")
            s.sendall(conn.data_to_send())
    raise AssertionError("the connection closed before the response ended")
