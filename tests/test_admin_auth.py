"""admin.auth: login, the lockout, session ids, idle expiry and logout."""

from __future__ import annotations

import time

import pytest

from admin import IDLE_TIMEOUT, auth, create_app
from storage import audit
from tests.admin_helpers import PASSWORD, Auth, csrf_token

pytest_plugins = ("tests.admin_fixtures",)

TABS = ["/admin/keys", "/admin/usage", "/admin/settings", "/admin/docs", "/admin/audit", "/admin/usage.csv"]


def session_cookie(client) -> str | None:
    cookie = client.get_cookie("pmg_admin", path="/admin")
    return cookie.value if cookie else None


@pytest.mark.parametrize("path", TABS + ["/admin/keys/key_000000000000"])
def test_every_page_needs_a_login(client, path):
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/admin/login?next=")


def test_admin_root_leads_to_the_keys(client, logged_in):
    for path in ("/admin", "/admin/"):
        r = client.get(path)
        assert (r.status_code, r.headers["Location"]) == (302, "/admin/keys")


def test_login_page_has_a_password_form(client):
    r = client.get("/admin/login")
    assert r.status_code == 200
    assert 'type="password"' in r.text and 'name="csrf_token"' in r.text


def test_login_page_when_logged_in_leads_on(client, logged_in):
    r = client.get("/admin/login?next=/admin/usage")
    assert (r.status_code, r.headers["Location"]) == (302, "/admin/usage")


def test_login_and_audit(client, auth):
    r = auth.login(addr="203.0.113.7")
    assert (r.status_code, r.headers["Location"]) == (302, "/admin/keys")
    assert client.get("/admin/keys").status_code == 200
    [entry] = audit.recent()
    assert (entry.action, entry.client_addr) == ("login", "203.0.113.7")


def test_wrong_password_is_refused_and_audited(client, auth):
    r = auth.login("wrong password!", addr="198.51.100.4")
    assert r.status_code == 401
    assert "Wrong password" in r.text
    assert PASSWORD not in r.text
    assert client.get("/admin/keys").status_code == 302
    [entry] = audit.recent()
    assert (entry.action, entry.client_addr) == ("login.failed", "198.51.100.4")


def test_password_is_compared_in_constant_time(app, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    with app.test_request_context():
        assert auth.state().password_ok(PASSWORD)
        assert not auth.state().password_ok(PASSWORD[:-1])
    # Digests of equal length: neither the content nor the length of the password leaks.
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_five_failures_lock_the_address_for_five_minutes(client, auth, clock):
    for _ in range(4):
        assert auth.login("nope nope nope", addr="198.51.100.9").status_code == 401
        clock.now += 30
    r = auth.login("nope nope nope", addr="198.51.100.9")
    assert r.status_code == 429 and "Try again in 5 minutes" in r.text
    # Locked: even the right password is refused, from that address only.
    assert auth.login(addr="198.51.100.9").status_code == 429
    clock.now += 299
    assert auth.login(addr="198.51.100.9").status_code == 429
    other = client.application.test_client()
    assert Auth(other).login(addr="198.51.100.10").status_code == 302
    clock.now += 2
    assert auth.login(addr="198.51.100.9").status_code == 302
    actions = [e.action for e in audit.recent()]
    assert actions.count("login.failed") == 5 and actions.count("login.refused") == 2


def test_failures_spread_over_more_than_five_minutes_do_not_lock(auth, clock):
    for _ in range(4):
        assert auth.login("nope nope nope", addr="198.51.100.9").status_code == 401
    clock.now += 301
    assert auth.login("nope nope nope", addr="198.51.100.9").status_code == 401
    assert auth.login(addr="198.51.100.9").status_code == 302


def test_session_id_changes_at_login(client, auth):
    client.get("/admin/login")
    before = session_cookie(client)
    with client.session_transaction("/admin/keys") as s:
        anonymous_csrf = s.get("csrf_token")
    auth.login()
    after = session_cookie(client)
    assert before and after and before != after
    with client.session_transaction("/admin/keys") as s:
        assert s["sid"] and s.get("csrf_token") != anonymous_csrf
    # The cookie from before the login is still anonymous.
    stale = client.application.test_client()
    stale.set_cookie("pmg_admin", before, path="/admin")
    assert stale.get("/admin/keys").status_code == 302


def test_a_second_login_gets_another_session_id(client, auth):
    auth.login()
    with client.session_transaction("/admin/keys") as s:
        first = s["sid"]
    client.post("/admin/login", data={"csrf_token": auth.token(), "password": PASSWORD})
    with client.session_transaction("/admin/keys") as s:
        assert s["sid"] != first


def test_logout_ends_the_session_for_good(client, auth):
    auth.login()
    cookie = session_cookie(client)
    r = auth.logout()
    assert (r.status_code, r.headers["Location"]) == (302, "/admin/login")
    assert client.get("/admin/keys").status_code == 302
    # A copy of the cookie taken before the logout does not work either.
    replay = client.application.test_client()
    replay.set_cookie("pmg_admin", cookie, path="/admin")
    assert replay.get("/admin/keys").status_code == 302
    assert [e.action for e in audit.recent()][:2] == ["logout", "login"]


def test_logout_needs_post(client, logged_in):
    assert client.get("/admin/logout").status_code == 405


def test_session_expires_after_inactivity(client, logged_in):
    with client.session_transaction("/admin/keys") as s:
        s["seen"] = time.time() - IDLE_TIMEOUT - 1
    r = client.get("/admin/keys")
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    assert "Your session expired" in client.get("/admin/login").text
    with client.session_transaction("/admin/keys") as s:
        s["seen"] = time.time()
    assert client.get("/admin/keys").status_code == 302, "the expired session stays ended"


def test_activity_keeps_the_session_alive(client, logged_in):
    with client.session_transaction("/admin/keys") as s:
        s["seen"] = time.time() - IDLE_TIMEOUT + 60
    assert client.get("/admin/keys").status_code == 200
    with client.session_transaction("/admin/keys") as s:
        assert time.time() - s["seen"] < 5


def test_cookie_lifetime_is_the_idle_timeout(client, auth):
    auth.login()
    cookies = auth.client.get("/admin/keys").headers.getlist("Set-Cookie")
    header = next(h for h in cookies if h.startswith("pmg_admin="))
    assert "Expires=" in header
    assert client.application.permanent_session_lifetime.total_seconds() == IDLE_TIMEOUT


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/admin/usage?period=7d", "/admin/usage?period=7d"),
        ("", "/admin/keys"),
        ("https://evil.example/admin/", "/admin/keys"),
        ("//evil.example/admin/", "/admin/keys"),
        ("/v1/models", "/admin/keys"),
        ("/admin/\\evil", "/admin/keys"),
        ("/admin/\r\nSet-Cookie: x=1", "/admin/keys"),
        ("\r\nSet-Cookie: x=1", "/admin/keys"),
        ("/admin/keys\nx", "/admin/keys"),
        ("/\t/evil.example/admin/", "/admin/keys"),
        ("/admin/\x00", "/admin/keys"),
    ],
)
def test_login_returns_only_to_admin_pages(auth, target, expected):
    r = auth.login(next=target)
    assert (r.status_code, r.headers["Location"]) == (302, expected)
    assert [h for h in r.headers.getlist("Set-Cookie") if not h.startswith("pmg_admin=")] == []


@pytest.mark.parametrize("target", ["/admin/\r\nSet-Cookie:x=1", "\r\nSet-Cookie:x=1", "/admin/usage\r"])
def test_a_logged_in_login_page_with_a_bad_next_leads_to_the_keys(client, logged_in, target):
    r = client.get("/admin/login", query_string={"next": target})
    assert (r.status_code, r.headers["Location"]) == (302, "/admin/keys")
    assert [h for h in r.headers.getlist("Set-Cookie") if not h.startswith("pmg_admin=")] == []


def test_sessions_survive_a_restart(client, auth, settings):
    auth.login()
    cookie = session_cookie(client)
    restarted = create_app(settings, {"TESTING": True}).test_client()
    restarted.set_cookie("pmg_admin", cookie, path="/admin")
    assert restarted.get("/admin/keys").status_code == 200


def test_login_form_needs_its_csrf_token(client):
    r = client.post("/admin/login", data={"password": PASSWORD})
    assert r.status_code == 400
    assert client.get("/admin/keys").status_code == 302
    page = client.get("/admin/login")
    assert client.post("/admin/login", data={"password": PASSWORD, "csrf_token": csrf_token(page.text)}
                       ).status_code == 302
