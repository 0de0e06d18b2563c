"""admin.forwarded and storage.admin_link: X-Forwarded-* count only with the gateway's secret.

The same through real processes, with the lockout: tests/test_admin_gateway.py.
"""

from __future__ import annotations

import os
import stat

import pytest
from werkzeug.test import Client

from admin import create_app
from admin.forwarded import FromGateway
from storage import admin_link, audit
from tests.admin_helpers import PASSWORD, Auth, csrf_token, from_gateway

pytest_plugins = ("tests.admin_fixtures",)

FORGED = {
    "X-Forwarded-For": "192.0.2.66",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": "for=192.0.2.66;proto=https",
}


@pytest.mark.parametrize(
    "secret",
    [None, "", "wrong", "x" * 64, "é"],
    ids=["none", "empty", "wrong", "wrong-but-long", "not-ascii"],
)
def test_forwarded_headers_without_the_gateways_secret_are_ignored(client, secret):
    page = client.get("/admin/login")
    headers = dict(FORGED) | ({admin_link.HEADER: secret} if secret is not None else {})
    r = client.post("/admin/login", data={"csrf_token": csrf_token(page.text), "password": "wrong password!"},
                    headers=headers)
    assert r.status_code == 401
    # The socket's address (the test client's), not the forged one; the cookie is not Secure.
    assert audit.recent()[0].client_addr == "127.0.0.1"
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("pmg_admin="))
    assert "Secure" not in cookie


def test_the_lockout_counts_the_socket_address_when_forwarded_for_is_forged(client):
    for n in range(5):
        page = client.get("/admin/login")
        form = {"csrf_token": csrf_token(page.text), "password": "nope nope nope"}
        r = client.post("/admin/login", data=form, headers={"X-Forwarded-For": f"198.51.100.{n}"})
    assert r.status_code == 429
    assert Auth(client).login(addr="127.0.0.1").status_code == 429
    assert {e.client_addr for e in audit.recent()} == {"127.0.0.1"}


def seen_by_app(secret: str, headers: dict[str, str]) -> dict:
    """The WSGI environ the app behind FromGateway gets for a request with `headers`."""
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    Client(FromGateway(app, secret)).get("/admin/login", headers=headers,
                                         environ_base={"REMOTE_ADDR": "127.0.0.1"})
    return seen


def test_with_the_secret_the_gateways_headers_count_and_the_secret_is_removed():
    secret = "s" * 64
    seen = seen_by_app(secret, {**FORGED, admin_link.HEADER: secret})
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("192.0.2.66", "https")
    assert seen["HTTP_HOST"] == "evil.example"
    assert admin_link.WSGI_KEY not in seen
    assert secret not in repr(seen)


def test_without_the_secret_every_forwarded_header_is_removed():
    seen = seen_by_app("s" * 64, {**FORGED, admin_link.HEADER: "s" * 63})
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert seen["HTTP_HOST"] == "localhost"
    assert not [k for k in seen if "FORWARDED" in k or k == admin_link.WSGI_KEY]


def test_the_secret_is_made_once_in_data_dir_and_kept(tmp_path):
    first = admin_link.load_or_create(tmp_path)
    path = tmp_path / admin_link.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= admin_link.MIN_LENGTH
    assert admin_link.load_or_create(tmp_path) == first
    assert os.listdir(tmp_path) == [admin_link.FILE_NAME], "no temporary file left"


def test_the_process_that_comes_second_takes_the_first_ones_secret(tmp_path, monkeypatch):
    path = tmp_path / admin_link.FILE_NAME
    real_link = os.link

    def other_process_first(src, dst):
        # The other process links its file into place between our look and our link.
        path.write_text("theirs-" + "t" * 40 + "\n")
        real_link(src, dst)

    monkeypatch.setattr(admin_link.os, "link", other_process_first)
    assert admin_link.load_or_create(tmp_path) == "theirs-" + "t" * 40
    assert os.listdir(tmp_path) == [admin_link.FILE_NAME]


def test_a_file_without_a_usable_secret_stops_the_admin(settings):
    (settings.data_dir / admin_link.FILE_NAME).write_text("short\n")
    from admin.startup import StartupError

    with pytest.raises(StartupError, match="no usable secret"):
        create_app(settings)


def test_the_admin_uses_the_secret_in_data_dir(app, client, settings):
    # What the gateway reads from the same file is what the admin believes.
    secret = (settings.data_dir / admin_link.FILE_NAME).read_text().strip()
    page = client.get("/admin/login")
    r = client.post("/admin/login", data={"csrf_token": csrf_token(page.text), "password": PASSWORD},
                    headers={admin_link.HEADER: secret, "X-Forwarded-For": "203.0.113.77"})
    assert r.status_code == 302
    assert audit.recent()[0].client_addr == "203.0.113.77"
    assert from_gateway(app)[admin_link.HEADER] == secret
