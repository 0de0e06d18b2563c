"""admin.security: CSRF on every state change, security headers, cookie flags, no inline code."""

from __future__ import annotations

import re

import pytest

from storage import audit, keys, prices
from storage import settings as limits_store
from tests.admin_helpers import PASSWORD, Auth, from_gateway

pytest_plugins = ("tests.admin_fixtures",)

PAGES = ["/admin/login", "/admin/keys", "/admin/usage", "/admin/settings", "/admin/docs", "/admin/audit"]


@pytest.fixture
def key_id(app) -> str:
    return keys.create_key("victim")[0].key_id


def state_changes(key_id: str) -> list[tuple[str, dict]]:
    return [
        ("/admin/keys", {"name": "sneaky"}),
        (f"/admin/keys/{key_id}", {"name": "renamed", "rate_limit": "1"}),
        (f"/admin/keys/{key_id}/revoke", {}),
        (f"/admin/keys/{key_id}/enable", {}),
        (f"/admin/keys/{key_id}/rotate", {}),
        (f"/admin/keys/{key_id}/delete", {}),
        ("/admin/settings/limits", {"key_rate_limit_requests": "1"}),
        ("/admin/settings/limits/reset", {}),
        ("/admin/settings/prices", {"model": "evil", "input_per_mtok": "0"}),
        ("/admin/settings/spend", {"global_budget": "1", "global_tpm": "1"}),
        (f"/admin/keys/{key_id}", {"name": "victim", "budget": "0.01", "models_other": "none-such"}),
        ("/admin/logout", {}),
    ]


def snapshot() -> tuple:
    return (
        [(k.key_id, k.name, k.key_hash, k.enabled, k.rate_limit, k.budget_eur, k.models, k.tpm)
         for k in keys.list_keys()],
        prices.all_prices(),
        list(limits_store.Setting.select().tuples()),
    )


@pytest.mark.parametrize("index", range(12))
@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_every_state_change_needs_the_csrf_token(client, logged_in, key_id, index, token):
    url, data = state_changes(key_id)[index]
    if token == "wrong":
        # A valid token, but of another session.
        other = Auth(client.application.test_client())
        assert other.login().status_code == 302
        data = {**data, "csrf_token": other.token()}
    before = snapshot()
    r = client.post(url, data=data)
    assert r.status_code == 400
    assert "security token" in r.text
    assert snapshot() == before
    assert client.get("/admin/keys").status_code == 200, "still logged in"


def test_state_changes_are_refused_without_login(client, key_id):
    page = client.get("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    before = snapshot()
    for url, data in state_changes(key_id):
        r = client.post(url, data={**data, "csrf_token": token})
        assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login"), url
    assert snapshot() == before


@pytest.fixture
def visit(client, auth):
    """GET a page as the operator sees it: the login page logged out, the others logged in."""

    def get(path: str):
        if path != "/admin/login":
            auth.login()
        response = client.get(path)
        assert response.status_code == 200
        return response

    return get


@pytest.mark.parametrize("path", PAGES)
def test_security_headers(visit, path):
    r = visit(path)
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"


def test_static_files_have_the_headers_but_may_be_cached(client):
    r = client.get("/admin/static/admin.css")
    assert r.status_code == 200
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers.get("Cache-Control") != "no-store"
    r.close()


def test_the_page_showing_a_new_key_is_not_stored(client, logged_in):
    r = logged_in.post("/admin/keys", {"name": "shown once"})
    assert r.status_code == 200 and "pmg_" in r.text
    assert r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_inline_script_or_style(visit, path):
    html = visit(path).text
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "inline script"
    assert not re.search(r"<style\b", html)
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/admin", "#")), f"{url} is not served by the admin"


def set_cookie_header(response) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("pmg_admin="))


def test_session_cookie_flags_over_http(client, auth):
    header = set_cookie_header(auth.login())
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Path=/admin" in header
    assert "Secure" not in header


def test_session_cookie_is_secure_over_https(client, app):
    page = client.get("/admin/login", headers=from_gateway(app, **{"X-Forwarded-Proto": "https"}))
    assert "Secure" in set_cookie_header(page)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.1"}
    r = client.post("/admin/login", data={"csrf_token": token, "password": PASSWORD},
                    headers=from_gateway(app, **forwarded))
    assert r.status_code == 302, "no Referer needed: the pages send Referrer-Policy: no-referrer"
    header = set_cookie_header(r)
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Strict" in header


def test_client_address_comes_from_the_gateway(client, auth):
    auth.login(addr="192.0.2.55")
    assert audit.recent()[0].client_addr == "192.0.2.55"


def test_the_key_page_has_no_inline_script_or_style(client, visit, key_id):
    # The spend bar and the charts are sized by SVG attributes, which the CSP allows.
    keys.update(key_id, budget_eur=1.0)
    html = visit(f"/admin/keys/{key_id}").text + client.get("/admin/keys").text
    assert "<svg class=\"meter" in html
    assert not re.search(r"\sstyle=", html) and not re.search(r"<style\b", html)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "inline script"


def test_unknown_page_is_a_tidy_404(client, logged_in):
    r = client.get("/admin/nope")
    assert r.status_code == 404
    assert "404 Not Found" in r.text and "<!doctype html>" in r.text
    assert r.headers["X-Frame-Options"] == "DENY"
