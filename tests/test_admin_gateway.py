"""The admin behind the gateway, as real processes on loopback: who the lockout counts, `next`
with CR/LF, and bodies the admin never gets.

Clients connect from different loopback addresses (127.0.0.0/8 is all loopback on Linux), so
that the gateway sees, and the admin counts, a different client address per test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from storage import admin_link, audit
from storage.db import close_database, open_database
from tests import procs
from tests.admin_helpers import csrf_token

PASSWORD = "gateway-test-password-1"
MB = 1024 * 1024


@dataclass
class Stack:
    gateway: procs.Proc
    admin: procs.Proc
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    def audit(self, count: int) -> list[tuple[str, str]]:
        """The last `count` audit entries, oldest first, as (action, client address)."""
        open_database(f"sqlite:///{self.data_dir / 'gateway.db'}")
        try:
            return [(e.action, e.client_addr) for e in reversed(audit.recent(count))]
        finally:
            close_database()

    def admin_bytes_written(self) -> int:
        """What the admin process has written so far, files included: a body waitress spools
        to TMPDIR shows up here."""
        io = Path(f"/proc/{self.admin.popen.pid}/io").read_text()
        return int(next(line for line in io.splitlines() if line.startswith("wchar:")).split()[1])


@pytest.fixture(scope="module")
def stack(upstream, tmp_path_factory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("admin-gateway")
    admin_port = procs.free_port()
    # MAX_BODY_MB stays at its default (30): what refuses the bodies below is the admin's limit.
    wide = {"IP_RATE_LIMIT_REQUESTS": "100000"}
    gateway = procs.start_gateway(data_dir, upstream.port, admin_port=admin_port, **wide)
    env = procs.gateway_env(data_dir, upstream.port, gateway.port, admin_port,
                            ADMIN_PASSWORD=PASSWORD, **wide)
    admin = procs.Proc("admin", [sys.executable, "-m", "admin"], env, data_dir / "admin.log", admin_port)
    try:
        admin.start().wait_port()
    except BaseException:
        gateway.stop()
        raise
    yield Stack(gateway, admin, data_dir)
    admin_code, gateway_code = admin.stop(), gateway.stop()
    assert admin_code == 0, admin.log()
    assert gateway_code == 0, gateway.log()
    for proc in (admin, gateway):
        assert "Traceback" not in proc.log() and "crashed" not in proc.log(), proc.log()


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def login(http: httpx.Client, base: str, password: str, headers: dict | None = None, **form):
    page = http.get(f"{base}/admin/login", headers=headers)
    assert page.status_code == 200, page.text
    data = {"csrf_token": csrf_token(page.text), "password": password, **form}
    return http.post(f"{base}/admin/login", data=data, headers=headers)


# -- A: X-Forwarded-For counts only when the gateway sent it -----------------------------------


def test_forged_forwarded_for_sent_straight_to_the_admin_does_not_escape_the_lockout(stack):
    with client_from("127.0.0.21") as http:
        statuses = [
            login(http, stack.admin_url, "wrong password!", {"X-Forwarded-For": f"203.0.113.{n}"}).status_code
            for n in range(5)
        ]
        assert statuses == [401, 401, 401, 401, 429]
        right = login(http, stack.admin_url, PASSWORD, {"X-Forwarded-For": "203.0.113.99"})
        assert right.status_code == 429
    assert stack.audit(6) == [("login.failed", "127.0.0.21")] * 5 + [("login.refused", "127.0.0.21")]
    # Through the gateway the same client is the same address, still locked out; another is not.
    with client_from("127.0.0.21") as http:
        assert login(http, stack.url, PASSWORD).status_code == 429
    with client_from("127.0.0.22") as http:
        r = login(http, stack.url, PASSWORD)
        assert (r.status_code, r.headers["location"]) == (302, "/admin/keys")
        assert http.get(f"{stack.url}/admin/keys").status_code == 200
    assert stack.audit(1) == [("login", "127.0.0.22")]


def test_forged_forwarded_proto_and_secret_sent_straight_to_the_admin_are_ignored(stack):
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7", admin_link.HEADER: "guess"}
    with client_from("127.0.0.23") as http:
        page = http.get(f"{stack.admin_url}/admin/login", headers=forged)
        assert "Secure" not in page.headers["set-cookie"], "https believed"
        r = login(http, stack.admin_url, "wrong password!", forged)
    assert r.status_code == 401
    assert stack.audit(1) == [("login.failed", "127.0.0.23")]


def test_through_the_gateway_each_client_counts_as_itself_whatever_it_sends(stack):
    # A client's own copies of the headers the admin trusts (any spelling) are replaced: with
    # them appended instead, the admin would see two secrets, believe neither and count the
    # gateway's 127.0.0.1.
    forged = {"X-Forwarded-For": "203.0.113.8", admin_link.HEADER: "guess", "x-gateway-SECRET": "guess",
              "Forwarded": "for=203.0.113.8", "X-Forwarded-Proto": "https"}
    with client_from("127.0.0.24") as http:
        r = login(http, stack.url, "wrong password!", forged)
    assert r.status_code == 401
    assert "Secure" not in r.headers["set-cookie"]
    assert stack.audit(1) == [("login.failed", "127.0.0.24")]
    with client_from("127.0.0.25") as http:
        assert login(http, stack.url, PASSWORD).status_code == 302
    assert stack.audit(1) == [("login", "127.0.0.25")]


# -- B: CR/LF in `next` ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/admin/\r\nSet-Cookie: x=1", "\r\nSet-Cookie:x=1", "/admin/usage\n"])
def test_crlf_in_next_through_the_gateway_leads_to_the_keys(stack, target):
    with client_from("127.0.0.26") as http:
        r = login(http, stack.url, PASSWORD, next=target)
        assert (r.status_code, r.headers["location"]) == (302, "/admin/keys")
        assert [c for c in r.headers.get_list("set-cookie") if not c.startswith("pmg_admin=")] == []
        # Logged in, the login page leads on to `next` at once.
        r = http.get(f"{stack.url}/admin/login", params={"next": target})
        assert (r.status_code, r.headers["location"]) == (302, "/admin/keys")
        assert "x=1" not in str(r.headers)


# -- C: bodies ------------------------------------------------------------------------------


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends it chunked."""
    for _ in range(total // size):
        yield b"a" * size


def post_chunked(http: httpx.Client, url: str, total: int) -> int | None:
    """The status, or None when the connection was closed while the body was still going."""
    try:
        return http.post(url, content=chunks(total),
                         headers={"content-type": "application/x-www-form-urlencoded"}).status_code
    except httpx.TransportError:
        return None


def test_a_declared_body_over_the_limit_is_refused_by_the_gateway(stack):
    before = stack.admin_bytes_written()
    with client_from("127.0.0.27") as http:
        r = http.post(f"{stack.url}/admin/login", content=b"a" * (5 * MB),
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert stack.admin_bytes_written() - before < 64 * 1024, "the admin got the body"


def test_a_chunked_body_over_the_limit_does_not_reach_the_admin_whole(stack):
    before = stack.admin_bytes_written()
    with client_from("127.0.0.28") as http:
        # Refused at its headers; the client may see the answer, or the connection closed under it.
        assert post_chunked(http, f"{stack.url}/admin/login", 5 * MB) in (411, None)
    assert stack.admin_bytes_written() - before < 64 * 1024, "the admin got the body"
    # The gateway and the admin go on as before.
    with client_from("127.0.0.28") as http:
        assert login(http, stack.url, PASSWORD).status_code == 302


def test_bodies_within_the_limit_still_reach_the_admin(stack):
    with client_from("127.0.0.29") as http:
        # A long password: the admin reads it and refuses it, the limit lets it through.
        assert login(http, stack.url, "x" * (MB // 2)).status_code == 401
        page = http.get(f"{stack.url}/admin/login")
        form = f"csrf_token={csrf_token(page.text)}&password={PASSWORD}".encode()
        r = http.post(f"{stack.url}/admin/login", content=iter([form]),
                      headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 411 and r.json()["error"]["code"] == "length_required", "chunked: refused"


def test_the_admin_refuses_a_large_chunked_body_sent_straight_to_it(stack):
    # The second line of defence: waitress stops reading at the admin's limit, before TMPDIR.
    before = stack.admin_bytes_written()
    with client_from("127.0.0.30") as http:
        assert post_chunked(http, f"{stack.admin_url}/admin/login", 5 * MB) in (413, None)
    assert stack.admin_bytes_written() - before < 2 * MB, "the admin spooled the body"
