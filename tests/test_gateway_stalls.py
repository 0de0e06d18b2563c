"""UPSTREAM_IDLE_TIMEOUT: an upstream that stops sending in the middle of an answer lets go.

The fake upstream stalls right after the headers of a stream (`hold-stream` with a long delay);
a small upstream of this module's own stalls after part of a stream, or part of a JSON body.
Every gateway here waits one second between two pieces of an answer.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import httpx
import pytest
import trustme

from storage import keys
from tests import procs

WAIT = 10  # seconds; the stalls end after about 1
CHAT = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
EVENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-oss-120b",'
    b'"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"


class StallingUpstream:
    """Answers `/v1/chat/completions` with two SSE events, or `/v1/embeddings` with 10 bytes of a
    1000-byte JSON body, then sends nothing more until the gateway goes away."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.let_go = threading.Event()  # the gateway closed a stalled connection
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/v1/chat/completions"):
                conn.sendall(SSE_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(EVENT), EVENT) for _ in range(2)))
            elif path.startswith(b"/v1/embeddings"):
                conn.sendall(JSON_HEAD + b'{"object":')
            else:  # the gateway's health probe
                conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            conn.settimeout(60)
            try:
                while conn.recv(65536):  # the gateway sends nothing more: wait for its close
                    pass
            except OSError:
                pass
            self.let_go.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def stalling():
    upstream = StallingUpstream()
    yield upstream
    upstream.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def read_stream(gateway, key: str, params: dict | None = None, **kwargs) -> tuple[int, bytes, str]:
    """Status, the bytes received, and how the stream ended: "complete" or the error's name."""
    received = b""
    with httpx.Client(timeout=WAIT, **kwargs) as c, c.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=CHAT, params=params, headers=bearer(key)
    ) as r:
        try:
            for chunk in r.iter_raw():
                received += chunk
        except httpx.HTTPError as e:
            return r.status_code, received, type(e).__name__
    return r.status_code, received, "complete"


def test_a_stream_that_stalls_after_its_headers_is_ended_and_metered(start_gateway):
    gateway = start_gateway(UPSTREAM_IDLE_TIMEOUT="1", RATE_LIMIT_REQUESTS="100000")
    key_id, key = gateway.new_key()
    params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "30000"}
    status, received, ended = read_stream(gateway, key, params)
    assert (status, received, ended) == (200, b"", "RemoteProtocolError")  # cut: not a whole answer
    [row] = gateway.usage_rows(key_id)
    assert (row.status, row.complete, row.streamed) == (200, False, True)
    logged = [line for line in gateway.proc.log().splitlines() if "/v1/chat/completions" in line]
    assert logged[-1].endswith(" interrupted")

    def upstream_let_go() -> bool:
        [held] = [q for q in gateway.upstream_requests() if "hold-stream" in q["query"]]
        return held["outcome"] == "client_disconnected"

    procs.wait_until(upstream_let_go, timeout=WAIT)


def stalling_gateway(start_gateway, stalling):
    """A gateway in front of the stalling upstream, and a key it has loaded (key id, plaintext)."""
    gateway = start_gateway(upstream_port=stalling.port, UPSTREAM_IDLE_TIMEOUT="1")
    gateway.use_database()
    key, plaintext = keys.create_key("stall")
    url = f"{gateway.url}/v1/models"  # a 404 from this upstream: the key is loaded once it is not a 401
    procs.wait_until(lambda: httpx.get(url, headers=bearer(plaintext)).status_code != 401)
    return gateway, key.key_id, plaintext


def test_a_stream_that_stalls_midway_is_ended_after_what_came(start_gateway, stalling):
    gateway, key_id, plaintext = stalling_gateway(start_gateway, stalling)
    status, received, ended = read_stream(gateway, plaintext)
    assert status == 200 and ended == "RemoteProtocolError"
    assert received.count(b"data: ") == 2, "the two events that came were passed on"
    rows = gateway.usage_rows(key_id, count=2)  # the /v1/models check and the stream
    assert (rows[-1].status, rows[-1].complete) == (200, False)
    assert stalling.let_go.wait(WAIT), "the gateway let go of the upstream connection"


def test_a_json_answer_that_stalls_gets_a_504(start_gateway, stalling):
    gateway, key_id, plaintext = stalling_gateway(start_gateway, stalling)
    body = {"model": "m", "input": "hi"}
    r = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers=bearer(plaintext), timeout=WAIT)
    assert (r.status_code, r.json()["error"]["code"]) == (504, "upstream_timeout")
    rows = gateway.usage_rows(key_id, count=2)
    assert rows[-1].status == 504


def test_a_stream_that_keeps_coming_is_not_cut(start_gateway):
    """Ten events 0.3 s apart: three seconds in all, never one without news."""
    gateway = start_gateway(UPSTREAM_IDLE_TIMEOUT="1", RATE_LIMIT_REQUESTS="100000")
    _, key = gateway.new_key()
    params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "300"}
    status, received, ended = read_stream(gateway, key, params)
    assert (status, ended) == (200, "complete") and b"[DONE]" in received


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory):
    """The fake upstream over HTTPS, with the CA the gateway is told to trust."""
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert("127.0.0.1")
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    files["key"].write_bytes(cert.private_key_pem.bytes())
    port = procs.free_port()
    args = [sys.executable, str(procs.ROOT / "tests" / "fake_upstream.py"), "--port", str(port)]
    args += ["--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])]
    log = Path(folder) / "fake-upstream.log"
    proc = procs.Proc("tls fake upstream", args, procs.base_env(), log, port).start().wait_port()
    yield proc, str(files["ca"])
    proc.stop()


def test_an_https_upstream_that_stalls_is_let_go_too(start_gateway, tls_upstream):
    """The stall is noticed above TLS, whose records keep the socket busy for nothing."""
    proc, ca_file = tls_upstream
    gateway = start_gateway(
        UPSTREAM_URL=f"https://127.0.0.1:{proc.port}", UPSTREAM_CA_FILE=ca_file, UPSTREAM_IDLE_TIMEOUT="1",
        RATE_LIMIT_REQUESTS="100000",
    )
    _, key = gateway.new_key()
    params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "30000"}
    status, received, ended = read_stream(gateway, key, params)
    assert (status, received, ended) == (200, b"", "RemoteProtocolError")
