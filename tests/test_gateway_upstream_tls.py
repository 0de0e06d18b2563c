"""UPSTREAM_TIMEOUT with an https upstream as with an http one, for HTTP/1.1 and HTTP/2 clients.

mitmproxy does TLS in its own layers, so an https upstream's socket carries TLS records: the
504 must be handed to the waiting request above TLS. The late upstreams here: the fake upstream
(over https, and over http for comparison), one stuck in the TLS handshake, and an HTTP/2-only
one whose connection other requests share. Their certificates come from a private CA, which the
gateway trusts through UPSTREAM_CA_FILE, and name only the upstream's address: the gateway asks
the upstream for that, not for the name its own clients used.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trustme

from addons.engine import SERVER_HEADER
from storage import db, keys
from storage.models import Usage
from tests import procs

PROTOCOLS = ["HTTP/1.1", "HTTP/2"]
# The fake upstream's controls as query parameters: the gateway forwards only an API call's headers.
SLOW = "?fake-scenario=slow&fake-delay-s=30"

# No setting names a private CA for the upstream (mitmproxy trusts certifi's bundle, which
# ignores SSL_CERT_FILE): the launcher is run with the one mitmproxy option such a setting would
# set added to those it derives from the environment; everything else is `python -m addons`.
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pki")
    files = {"ca": str(folder / "ca.pem")}
    ca.cert_pem.write_to_path(files["ca"])
    # The gateway's own certificate, for the name its clients use; the upstreams' for their address.
    for prefix, names in (("", ("localhost",)), ("upstream_", ("127.0.0.1",))):
        cert = ca.issue_cert(*names)
        for name, blobs in (("cert", cert.cert_chain_pems), ("key", [cert.private_key_pem])):
            files[prefix + name] = str(folder / f"{prefix}{name}.pem")
            (folder / f"{prefix}{name}.pem").write_bytes(b"".join(blob.bytes() for blob in blobs))
    return files


@pytest.fixture(scope="module")
def tls_upstream(pki, tmp_path_factory):
    port = procs.free_port()
    args = [sys.executable, str(procs.ROOT / "tests" / "fake_upstream.py"), "--port", str(port)]
    args += ["--tls-cert", pki["upstream_cert"], "--tls-key", pki["upstream_key"]]
    log = tmp_path_factory.mktemp("upstream") / "fake-upstream.log"
    proc = procs.Proc("tls fake upstream", args, procs.base_env(), log, port).start().wait_port()
    yield proc
    proc.stop()


@dataclass
class Gateway:
    proc: procs.Proc
    upstream_url: str
    data_dir: Path
    ca_file: str

    def url(self, path: str) -> str:
        return f"https://localhost:{self.proc.port}{path}"

    def use_database(self) -> None:
        db.open_database(f"sqlite:///{self.data_dir / 'gateway.db'}")


@pytest.fixture(scope="module")
def start_gateway(pki, tmp_path_factory):
    """Gateways serving HTTPS (for HTTP/2) in front of `upstream_url`, with a 1 s UPSTREAM_TIMEOUT."""
    started: list[procs.Proc] = []

    def start(upstream_url: str) -> Gateway:
        data_dir = tmp_path_factory.mktemp("gateway")
        port = procs.free_port()
        env = procs.gateway_env(
            data_dir,
            0,  # replaced by UPSTREAM_URL
            port,
            procs.free_port(),
            UPSTREAM_URL=upstream_url,
            UPSTREAM_TIMEOUT="1",
            TLS_CERT_FILE=pki["cert"],
            TLS_KEY_FILE=pki["key"],
            RATE_LIMIT_REQUESTS="100000",
            UPSTREAM_CA_FILE=pki["ca"],
        )
        args = [sys.executable, "-m", "addons"]
        proc = procs.Proc("gateway", args, env, data_dir / "gateway.log", port)
        started.append(proc)
        return Gateway(proc.start().wait_port(), upstream_url, data_dir, pki["ca"])

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module", params=["https", "http"])
def gateway(request, start_gateway, tls_upstream, upstream):
    if request.param == "https":
        return start_gateway(f"https://127.0.0.1:{tls_upstream.port}")
    return start_gateway(f"http://127.0.0.1:{upstream.port}")


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


def client(ca: trustme.CA, protocol: str) -> httpx.Client:
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT) if protocol == "HTTP/2" else ssl.create_default_context()
    ca.configure_trust(context)
    return httpx.Client(http2=protocol == "HTTP/2", verify=context, timeout=20)


def new_key(gateway: Gateway, c: httpx.Client) -> tuple[str, dict]:
    """A key the gateway has loaded, and the headers that present it."""
    gateway.use_database()
    key, plaintext = keys.create_key("upstream-tls")
    headers = {"authorization": f"Bearer {plaintext}"}
    # Whatever the upstream does, the key is loaded once it is no longer refused.
    procs.wait_until(lambda: c.get(gateway.url("/v1/models"), headers=headers).status_code != 401)
    return key.key_id, headers


def usage_rows(gateway: Gateway, key_id: str, count: int) -> list[Usage]:
    """The key's usage rows, oldest first, once at least `count` are written."""
    gateway.use_database()

    def written():
        rows = list(Usage.select().where(Usage.key_id == key_id).order_by(Usage.id))
        return rows if len(rows) >= count else None

    return procs.wait_until(written, timeout=10)


def chat(c: httpx.Client, gateway: Gateway, headers: dict, query: str = "") -> httpx.Response:
    body = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}
    return c.post(gateway.url(f"/v1/chat/completions{query}"), headers=headers, json=body)


def assert_timeout(r: httpx.Response, protocol: str) -> None:
    assert r.http_version == protocol
    assert r.status_code == 504, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["server"] == SERVER_HEADER
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "upstream_timeout"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_slow_upstream_gets_a_504_and_is_let_go(gateway, ca, pki, protocol):
    direct = httpx.Client(verify=ssl.create_default_context(cafile=pki["ca"]), timeout=5)
    with direct, client(ca, protocol) as c:
        direct.post(f"{gateway.upstream_url}/_fake/reset")
        key_id, headers = new_key(gateway, c)
        assert chat(c, gateway, headers).status_code == 200, "an answering upstream is reached"
        assert_timeout(chat(c, gateway, headers, SLOW), protocol)
        # Rows: the key's /v1/models probe, the answered chat, the timed out one.
        assert [row.status for row in usage_rows(gateway, key_id, 3)] == [200, 200, 504]
        assert chat(c, gateway, headers).status_code == 200, "the client goes on being served"

        # The gateway hung up on the slow request: the upstream saw it go, long before its 30 s.
        def slow_one_ended():
            recorded = direct.get(f"{gateway.upstream_url}/_fake/requests").json()
            [slow] = [q for q in recorded if "slow" in q["target"]]
            return slow["outcome"] == "client_disconnected"

        procs.wait_until(slow_one_ended)


@pytest.fixture(scope="module")
def silent_tls_upstream():
    """Accepts TCP connections (the kernel does, in the backlog) and never answers a TLS hello."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield s.getsockname()[1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upstream_stuck_in_the_tls_handshake_gets_a_504(start_gateway, silent_tls_upstream, ca, protocol):
    gateway = start_gateway(f"https://127.0.0.1:{silent_tls_upstream}")
    with client(ca, protocol) as c:
        # /v1/models would wait for the upstream too: the key is accepted when it stops being a 401.
        key_id, headers = new_key(gateway, c)
        # Over HTTP/2 the second request shares the client connection, whose attempt to connect
        # upstream is still under way: it must not hang either.
        for _ in range(2):
            assert_timeout(chat(c, gateway, headers), protocol)
        rows = usage_rows(gateway, key_id, 3)  # the probe and the two requests were metered
        # As the clients were told: mitmproxy answered these itself, and the rows say 504 too.
        assert [row.status for row in rows[-2:]] == [504, 504]


JSON = b"application/json"


class Http2Upstream:
    """An HTTPS upstream that speaks HTTP/2 only, as an OpenAI-compatible server behind a CDN may.

    It answers at once, except requests whose path asks it to hang; it counts its connections
    and records the streams the gateway resets.
    """

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert_file, key_file)
        self.tls.set_alpn_protocols(["h2"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.resets: list[int] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            s = self.tls.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        if s.selected_alpn_protocol() != "h2":  # the gateway's health probe: HTTP/1.1, no ALPN
            s.close()
            return
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        # The gateway may drop the connection at any point (at its stop, at the latest).
        with s, contextlib.suppress(OSError):
            s.sendall(conn.data_to_send())
            while data := s.recv(65536):
                for event in conn.receive_data(data):
                    if (
                        isinstance(event, h2.events.RequestReceived)
                        and b"hang" not in dict(event.headers)[b":path"]
                    ):
                        conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", JSON)])
                        conn.send_data(event.stream_id, b'{"object": "list", "data": []}', end_stream=True)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.error_code)
                s.sendall(conn.data_to_send())

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def h2_upstream(pki):
    upstream = Http2Upstream(pki["upstream_cert"], pki["upstream_key"])
    yield upstream
    upstream.close()


def test_http2_upstream_resets_only_the_stream_that_timed_out(start_gateway, h2_upstream, ca):
    """An HTTP/2 upstream connection carries other requests too: only the late one is given up."""
    gateway = start_gateway(f"https://127.0.0.1:{h2_upstream.port}")
    with client(ca, "HTTP/2") as c:
        _, headers = new_key(gateway, c)
        assert_timeout(c.get(gateway.url("/v1/models?hang"), headers=headers), "HTTP/2")
        assert c.get(gateway.url("/v1/models"), headers=headers).status_code == 200
    assert h2_upstream.connections == 1, "the upstream connection was kept for the next request"
    assert h2_upstream.resets == [h2.errors.ErrorCodes.CANCEL]


def test_health_checks_an_https_upstream_over_tls(gateway):
    trust = ssl.create_default_context(cafile=gateway.ca_file)
    r = httpx.get(gateway.url("/health"), verify=trust, timeout=10)
    assert r.json()["upstream"] == "ok", r.text
