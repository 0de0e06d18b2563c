"""Memory a client can make the gateway hold: request heads, bodies before a refusal, all bodies at once.

Every attack here is bounded (a few MB, a few connections, loopback) and every wait has a limit:
before the bounds, the gateway waited for the rest of an endless head or body instead of
answering, which is what these tests see fail.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme
from hyperframe.frame import ContinuationFrame, HeadersFrame

from addons.engine import SERVER_HEADER
from tests import procs

WAIT = 10  # seconds any answer may take here; they come within milliseconds


@pytest.fixture(scope="module")
def tls_gateway(start_gateway, certificate):
    return start_gateway(**certificate, MAX_BODY_MB="2", RATE_LIMIT_REQUESTS="100000")


def read_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one HTTP/1.1 answer (its Content-Length), or all until the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().partition(b":")[::2] for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"]) if b"content-length" in fields else None
    while length is not None and len(body) < length and (chunk := s.recv(65536)):
        body += chunk
    return head, body


def assert_json_error(head: bytes, body: bytes, status: int, code: str) -> None:
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"content-type: application/json" in head.lower()
    assert httpx.Response(200, content=body).json()["error"]["code"] == code


def closed_by_peer(s: socket.socket) -> bool:
    """True once the gateway has closed the connection (reads end), within WAIT seconds."""
    s.settimeout(WAIT)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


# -- request heads ----------------------------------------------------------------------------


def test_a_request_head_over_64_kb_is_refused_while_it_arrives(gateway):
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MB, never ended: the answer must not wait for the end
                s.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending
        head, body = read_answer(s)
    assert_json_error(head, body, 431, "request_headers_too_large")
    assert SERVER_HEADER.encode() in head
    assert httpx.get(f"{gateway.url}/health").status_code == 200, "the gateway keeps serving"


def test_a_head_under_64_kb_is_read(gateway):
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * 60_000))
        head, body = read_answer(s)
    assert_json_error(head, body, 401, "invalid_api_key")


def test_data_piled_up_behind_a_running_request_is_bounded(gateway, api_key):
    """A keep-alive client may send its next request early, not megabytes of it."""
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(
            b"POST /v1/chat/completions?fake-scenario=slow&fake-delay-s=30 HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            % api_key[1].encode()
        )
        try:
            for _ in range(64):
                s.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_by_peer(s)


def tls_socket(port: int, ca: trustme.CA, alpn: str) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s = context.wrap_socket(raw, server_hostname="localhost")
    assert s.selected_alpn_protocol() == alpn
    return s


def h2_connection() -> h2.connection.H2Connection:
    return h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
    )


def test_an_http2_header_block_over_64_kb_closes_the_connection(tls_gateway, ca):
    """HEADERS and CONTINUATION frames that never end the block: held by h2 until it ends."""
    conn = h2_connection()
    with tls_socket(tls_gateway.proc.port, ca, "h2") as s:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        first = HeadersFrame(1, flags=["END_STREAM"])
        first.data = b"\0" * 16384
        frames = [first] + [ContinuationFrame(1, data=b"\0" * 16384) for _ in range(50)]  # 800 KB
        try:
            for frame in frames:
                s.sendall(frame.serialize())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        terminated = False
        s.settimeout(WAIT)
        try:
            while data := s.recv(65536):
                for event in conn.receive_data(data):
                    terminated = terminated or isinstance(event, h2.events.ConnectionTerminated)
        except (ConnectionResetError, ssl.SSLError):
            terminated = True
    assert terminated


def test_a_long_head_over_http2_is_still_fine_under_64_kb(tls_gateway, ca):
    with httpx.Client(http2=True, verify=_context(ca), timeout=WAIT) as c:
        r = c.get(f"https://localhost:{tls_gateway.proc.port}/v1/models", headers={"x-big": "a" * 50_000})
    assert (r.http_version, r.status_code) == ("HTTP/2", 401)


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


def _context(ca: trustme.CA) -> ssl.SSLContext:
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    return context


# -- refusals come before the body ----------------------------------------------------------

DECLARED = 1_500_000  # under the fixtures' MAX_BODY_MB (2), so only the refusal can answer early


def post_head(path: str, headers: bytes = b"", length: int = DECLARED) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
        % (path.encode(), headers, length)
    )


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "expect-100-continue"])
def test_no_key_is_answered_before_the_body(gateway, expect):
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(post_head("/v1/chat/completions", expect))  # and not a byte of the body
        head, body = read_answer(s)
    # Not "100 Continue" first: there is nothing to continue.
    assert_json_error(head, body, 401, "invalid_api_key")
    assert b"connection: close" in head.lower()


def test_clients_that_send_the_whole_body_see_the_refusal(gateway):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"a" * DECLARED, timeout=WAIT)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    r = httpx.post(f"{gateway.url}/v2/unknown", content=b"a" * DECLARED, headers=bearer("x"), timeout=WAIT)
    assert r.status_code == 404


def test_curl_sees_the_refusal(gateway, tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(b"a" * DECLARED)
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(WAIT),
         "--data-binary", f"@{body}", f"{gateway.url}/v1/chat/completions"],
        capture_output=True, text=True, timeout=WAIT + 5,
    )
    assert result.stdout == "401", result.stderr


def test_a_rate_limited_key_is_refused_before_its_body_and_metered(gateway):
    key_id, plaintext = gateway.new_key(rate_limit=1)  # its one request was the check that it works
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(post_head("/v1/chat/completions", b"Authorization: Bearer %s\r\n" % plaintext.encode()))
        head, body = read_answer(s)
    assert_json_error(head, body, 429, "rate_limit_exceeded")
    assert b"retry-after:" in head.lower()
    [row] = gateway.usage_rows(key_id)
    assert (row.status, row.request_bytes) == (429, 0)


def test_http2_refusal_before_the_body(tls_gateway, ca):
    conn = h2_connection()
    with tls_socket(tls_gateway.proc.port, ca, "h2") as s:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "POST"), (":scheme", "https"), (":path", "/v1/chat/completions"),
             (":authority", "localhost"), ("content-length", str(DECLARED))],
        )  # the stream stays open: its body is never sent
        s.sendall(conn.data_to_send())
        status = None
        while status is None and (data := s.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
            s.sendall(conn.data_to_send())
    assert status == "401"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- the bodies held at once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tight_gateway(start_gateway):
    """Room for one full-size body at a time: MAX_BODY_MB and BODY_MEMORY_MB both 1."""
    return start_gateway(
        MAX_BODY_MB="1", BODY_MEMORY_MB="1", RATE_LIMIT_REQUESTS="100000", IP_RATE_LIMIT_REQUESTS="100000"
    )


def chat_body(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    head, tail = b'{"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "', b'"}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def held_post(port: int, key: str, body: bytes, sent: int, chunked: bool = False) -> socket.socket:
    """A connection that has sent a chat request's head and the first `sent` bytes of its body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    auth = b"Authorization: Bearer %s\r\n" % key.encode()
    if chunked:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (auth, sent, body[:sent])
        )
    else:
        s.sendall(post_head("/v1/chat/completions", auth, len(body)) + body[:sent])
    return s


def finish(s: socket.socket, body: bytes, sent: int, chunked: bool = False) -> tuple[bytes, bytes]:
    rest = body[sent:]
    s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest) if chunked else rest)
    answer = read_answer(s)
    s.close()
    return answer


def test_bodies_held_at_once_are_bounded(tight_gateway):
    _, key = tight_gateway.new_key()
    body = chat_body(600_000)
    first = held_post(tight_gateway.proc.port, key, body, 1000)  # 600 KB of the 1 MB taken
    with held_post(tight_gateway.proc.port, key, body, 0) as second:
        head, answer = read_answer(second)  # answered before its body: no room for it
    assert_json_error(head, answer, 503, "server_overloaded")
    assert b"retry-after: " in head.lower()
    assert finish(first, body, 1000)[0].startswith(b"HTTP/1.1 200 ")
    assert finish(held_post(tight_gateway.proc.port, key, body, 0), body, 0)[0].startswith(b"HTTP/1.1 200 ")


def test_a_body_of_unknown_size_takes_room_for_the_largest(tight_gateway):
    _, key = tight_gateway.new_key()
    body = chat_body(1000)
    chunked = held_post(tight_gateway.proc.port, key, body, 100, chunked=True)
    with held_post(tight_gateway.proc.port, key, body, 0) as small:
        assert_json_error(*read_answer(small), 503, "server_overloaded")
    assert finish(chunked, body, 100, chunked=True)[0].startswith(b"HTTP/1.1 200 ")
    assert finish(held_post(tight_gateway.proc.port, key, body, 0), body, 0)[0].startswith(b"HTTP/1.1 200 ")


def test_a_body_given_up_on_gives_its_room_back(tight_gateway):
    _, key = tight_gateway.new_key()
    body = chat_body(600_000)
    held_post(tight_gateway.proc.port, key, body, 1000).close()  # the client goes away mid-body

    def room_again() -> bool:
        head, _ = finish(held_post(tight_gateway.proc.port, key, body, 0), body, 0)
        return head.startswith(b"HTTP/1.1 200 ")

    procs.wait_until(room_again, timeout=WAIT)


def test_a_compressed_json_body_is_refused_before_it_is_read(gateway, api_key):
    """Decompressing it would be unbounded: 30 MB of gzip can inflate to 30 GB."""
    auth = b"Authorization: Bearer %s\r\nContent-Encoding: gzip\r\n" % api_key[1].encode()
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(post_head("/v1/chat/completions", auth))
        assert_json_error(*read_answer(s), 415, "unsupported_content_encoding")


# -- uploads are streamed ---------------------------------------------------------------------


def test_a_chunked_upload_is_streamed_to_the_upstream(gateway, api_key):
    key_id, key = api_key
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-large-v3\r\n--b\r\n'
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT) as s:
        s.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n" % (key.encode(), len(form), form)
        )

        def upstream_reading_it() -> bool:
            return any(
                q["path"] == "/v1/audio/transcriptions" and q["body_length"] and not q["body_complete"]
                for q in gateway.upstream_requests()
            )

        procs.wait_until(upstream_reading_it, timeout=WAIT)  # while the client has not finished
        s.sendall(b"4\r\n--\r\n\r\n0\r\n\r\n")
        head, _ = read_answer(s)
    assert head.startswith(b"HTTP/1.1 200 ")
    [row] = gateway.usage_rows(key_id)
    assert (row.request_bytes, row.model) == (len(form) + 4, "whisper-large-v3")


def test_a_streamed_upload_over_the_limit_is_cut(gateway, api_key):
    httpx.post(f"http://127.0.0.1:{gateway.upstream_port}/_fake/reset")

    def chunks():
        for _ in range(30):
            yield b"\0" * 100_000  # 3 MB, over the fixture's MAX_BODY_MB of 2

    r = httpx.post(f"{gateway.url}/v1/audio/transcriptions", headers=bearer(api_key[1]), content=chunks())
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    [upstream_saw] = gateway.upstream_requests()
    assert upstream_saw["body_length"] <= 2 * 1024 * 1024 and not upstream_saw["body_complete"]


def test_an_admitted_body_is_asked_for_at_once(gateway, api_key, tmp_path):
    """curl sends a body over 1 MB only after a `100 Continue`, or after waiting a second for it."""
    httpx.post(f"http://127.0.0.1:{gateway.upstream_port}/_fake/reset")
    body = tmp_path / "body.json"
    body.write_bytes(b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % (b"a" * DECLARED))
    result = subprocess.run(
        ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(WAIT),
         "-H", f"Authorization: Bearer {api_key[1]}", "-H", "Content-Type: application/json",
         "--data-binary", f"@{body}", f"{gateway.url}/v1/chat/completions"],
        capture_output=True, text=True, timeout=WAIT + 5,
    )
    assert result.stdout == "200", result.stderr
    assert "> Expect: 100-continue" in result.stderr and "< HTTP/1.1 100 Continue" in result.stderr
    [forwarded] = [q for q in gateway.upstream_requests() if q["path"] == "/v1/chat/completions"]
    assert "expect" not in forwarded["headers"], "mitmproxy answered it: it does not go upstream"
