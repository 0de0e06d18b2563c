"""admin.upstream_models: the key forms' model picker, from the upstream's GET /v1/models.

Against the fake upstream process (tests/fake_upstream.py) and, for the upstreams that misbehave,
small servers of the test's own on loopback.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import ssl
import threading
import time

import httpx
import pytest
import trustme

from admin import create_app, upstream_models
from admin.lockout import Lockout
from storage import config, keys
from storage.db import close_database, open_database
from tests.admin_helpers import PASSWORD, Auth

pytest_plugins = ("tests.admin_fixtures",)

MODELS_JSON = ("gemma-3-27b", "gpt-oss-120b", "openai/gpt-oss-120b", "qwen3-coder-30b-a3b",
               "qwen3-embedding-4b", "whisper-large-v3")


def admin_against(tmp_path, upstream_url: str, timeout: float = 1.0):
    settings = config.load({
        "DATA_DIR": str(tmp_path), "ADMIN_PASSWORD": PASSWORD, "UPSTREAM_URL": upstream_url,
        "PRIVATEMODE_LOG_FILE": str(tmp_path / "privatemode-proxy.log"),
    })
    open_database(settings.database_url)
    app = create_app(settings, {"TESTING": True, "ADMIN_LOCKOUT": Lockout(), "ADMIN_PROBE_TIMEOUT": timeout})
    auth = Auth(app.test_client())
    assert auth.login().status_code == 302
    return auth


@pytest.fixture
def with_upstream(tmp_path, upstream):
    auth = admin_against(tmp_path, f"http://127.0.0.1:{upstream.port}")
    yield auth
    close_database()


def asked_for_models(upstream) -> int:
    recorded = httpx.get(f"http://127.0.0.1:{upstream.port}/_fake/requests").json()
    return sum(1 for r in recorded if r["path"] == "/v1/models")


def test_the_create_form_offers_the_upstreams_models(with_upstream, upstream):
    before = asked_for_models(upstream)
    html = with_upstream.client.get("/admin/keys").text
    assert tuple(re.findall(r'<input type="checkbox" name="models" value="([^"]+)"', html)) == MODELS_JSON
    assert 'id="models-unavailable"' not in html and "not listed by the upstream" not in html
    # Remembered: the next pages do not ask again.
    with_upstream.client.get("/admin/keys")
    key, _ = keys.create_key("k")
    with_upstream.client.get(f"/admin/keys/{key.key_id}")
    assert asked_for_models(upstream) == before + 1


def test_ticked_models_are_stored(with_upstream):
    r = with_upstream.post("/admin/keys", {"name": "k", "models": ["gemma-3-27b", "whisper-large-v3"]})
    assert r.status_code == 200
    [key] = keys.list_keys()
    assert keys.allowed_models(key) == ("gemma-3-27b", "whisper-large-v3")
    page = with_upstream.client.get(f"/admin/keys/{key.key_id}").text
    assert 'value="gemma-3-27b" checked>' in page and 'value="gpt-oss-120b">' in page


def test_without_an_upstream_the_form_takes_typed_names(client, logged_in):
    # admin_fixtures' upstream: nothing listens there.
    html = client.get("/admin/keys").text
    assert 'name="models" value=' not in html
    assert 'id="models-unavailable"' in html and "ConnectionRefusedError" in html
    assert logged_in.post("/admin/keys", {"name": "k", "models_other": "gpt-oss-120b"}).status_code == 200
    assert keys.allowed_models(keys.list_keys()[0]) == ("gpt-oss-120b",)


class Server:
    """A loopback TCP server that hands each connection to `serve` on a thread of its own."""

    def __init__(self, serve):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn, self.done), daemon=True).start()

    def close(self):
        self.done.set()
        self.sock.close()


def silent(conn, done):
    """Accepts, reads the request, never answers."""
    with conn:
        conn.recv(65536)
        done.wait(10)


def dripping(conn, done):
    """Answers at once, then sends the body a byte every 0.1 s."""
    with conn:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not done.wait(0.1):
            try:
                conn.sendall(b" ")
            except OSError:
                return


@pytest.mark.parametrize("serve", [silent, dripping])
def test_a_slow_upstream_holds_the_page_no_longer_than_the_timeout(tmp_path, serve):
    server = Server(serve)
    try:
        auth = admin_against(tmp_path, f"http://127.0.0.1:{server.port}", timeout=0.5)
        start = time.monotonic()
        html = auth.client.get("/admin/keys").text
        took = time.monotonic() - start
        assert 'id="models-unavailable"' in html and "took more than 0.5 s" in html
        assert took < 1.5, took
        # The failure is remembered for a while: the next page does not wait again.
        start = time.monotonic()
        auth.client.get("/admin/keys")
        assert time.monotonic() - start < 0.4
    finally:
        server.close()
        close_database()


def serving(body: bytes, status: int = 200):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "body, status, names, error",
    [
        # Only ids a key's list could hold: no spaces, no control characters, not too long, strings.
        (json.dumps({"data": [{"id": "b-model"}, {"id": "a model"}, {"id": "x\u001b[2J"}, {"id": "y" * 300},
                              {"id": 7}, "z", {"id": "a-model"}, {"id": "<i>tag</i>"}]}).encode(), 200,
         ("<i>tag</i>", "a-model", "b-model"), None),
        (b'{"data": []}', 200, (), "the upstream listed no models"),
        (b"not json", 200, (), "the upstream listed no models"),
        (b'{"error": "no"}', 401, (), "the upstream answered HTTP 401"),
        (b"[" * (upstream_models.MAX_BYTES + 1), 200, (), "the upstream's model list is too large"),
    ],
)
def test_what_the_upstream_says_is_checked(body, status, names, error):
    server = serving(body, status)
    try:
        found = upstream_models.fetch(f"http://127.0.0.1:{server.server_address[1]}", 2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert (found.names, found.error) == (names, error)


def test_model_names_are_escaped_in_the_form(tmp_path):
    server = serving(json.dumps({"data": [{"id": "<script>alert(1)</script>"}]}).encode())
    try:
        auth = admin_against(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        html = auth.client.get("/admin/keys").text
    finally:
        server.shutdown()
        server.server_close()
        close_database()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html


def test_an_https_upstream_is_checked_against_its_certificate(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = serving(b'{"data": [{"id": "m"}]}')
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        # UPSTREAM_CA_FILE, as the gateway trusts it: the list is read.
        assert upstream_models.fetch(url, 2.0, ca_file).names == ("m",)
        # The system's roots do not know this CA: nothing is believed.
        refused = upstream_models.fetch(url, 2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert refused.names == () and "CERTIFICATE_VERIFY_FAILED" in refused.error


def test_the_cache_keeps_a_list_and_retries_a_failure_sooner():
    now = [100.0]
    cache = upstream_models.Cache(clock=lambda: now[0])
    down = cache.get("http://127.0.0.1:9", 0.5)
    assert down.error
    server = serving(b'{"data": [{"id": "m"}]}')
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert cache.get(url, 1.0).names == ("m",)
        server.shutdown()
        server.server_close()
        now[0] += upstream_models.KEEP_SECONDS - 1
        assert cache.get(url, 1.0).names == ("m",), "kept"
        now[0] += 2
        assert cache.get(url, 1.0).error, "asked again once the time is up"
    finally:
        server.server_close()
