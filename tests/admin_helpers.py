"""Helpers for the admin's test-client tests: the test password, CSRF tokens, logging in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Flask
from flask.testing import FlaskClient

from storage import admin_link

PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = CSRF_FIELD.search(html)
    if not match:
        raise AssertionError("no CSRF token in the page")
    return match.group(1)


def from_gateway(app: Flask, **headers: str) -> dict[str, str]:
    """`headers` as the gateway sends them: with the secret that makes the admin believe them."""
    secret = admin_link.load_or_create(app.extensions["admin_settings"].data_dir)
    return {admin_link.HEADER: secret, **headers}


class Clock:
    """A hand-driven clock for the lockout."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Auth:
    """Log in and out, and post forms with the session's CSRF token."""

    client: FlaskClient

    def login(self, password: str = PASSWORD, addr: str = "127.0.0.1", **kwargs):
        page = self.client.get("/admin/login")
        return self.client.post(
            "/admin/login",
            data={"csrf_token": csrf_token(page.text), "password": password, **kwargs},
            headers=from_gateway(self.client.application, **{"X-Forwarded-For": addr}),
        )

    def token(self) -> str:
        return csrf_token(self.client.get("/admin/keys").text)

    def post(self, url: str, data: dict | None = None, **kwargs):
        return self.client.post(url, data={"csrf_token": self.token(), **(data or {})}, **kwargs)

    def logout(self):
        return self.post("/admin/logout")
