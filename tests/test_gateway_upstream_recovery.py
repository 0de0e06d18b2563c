"""An upstream that was down and is back serves a client connection that saw it down.

mitmproxy kept a failed upstream connection among an HTTP/2 client connection's connections and
handed its error to every later request of that client connection: 502 until the client
reconnected. (An HTTP/1.1 client got a `connection: close` with its 502, so it reconnected.)
"""

from __future__ import annotations

import ssl
import sys

import httpx
import pytest
import trustme

from tests import procs


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def own_upstream(tmp_path):
    """A fake upstream of this test's own, which it stops and starts again on the same port."""
    port = procs.free_port()
    args = [sys.executable, str(procs.ROOT / "tests" / "fake_upstream.py"), "--port", str(port)]
    started = []

    def start() -> procs.Proc:
        proc = procs.Proc("fake upstream", args, procs.base_env(), tmp_path / "upstream.log", port)
        started.append(proc.start().wait_port())
        return started[-1]

    yield port, start
    for proc in started:
        proc.stop()


def test_http2_is_served_again_once_the_upstream_is_back(start_gateway, ca, own_upstream, tmp_path):
    port, start_upstream = own_upstream
    upstream = start_upstream()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    gateway = start_gateway(
        upstream_port=port, TLS_CERT_FILE=str(cert_file), TLS_KEY_FILE=str(key_file),
        FORCE_HTTPS="false",  # new_key checks the key over plain HTTP
    )
    _, key = gateway.new_key()
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    url, headers = f"https://localhost:{gateway.proc.port}/v1/models", {"authorization": f"Bearer {key}"}
    with httpx.Client(http2=True, verify=context, timeout=10) as c:
        r = c.get(url, headers=headers)
        assert (r.http_version, r.status_code) == ("HTTP/2", 200)
        upstream.stop()
        assert c.get(url, headers=headers).status_code == 502
        start_upstream()  # back, on the same port
        assert [c.get(url, headers=headers).status_code for _ in range(3)] == [200, 200, 200]
