"""Fixtures for the admin's Flask test-client tests: an app on a temporary database, and login.

Test modules load them with `pytest_plugins = ("tests.admin_fixtures",)`; helpers they use
directly are in tests/admin_helpers.py.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin import create_app
from admin.lockout import Lockout
from storage import config
from storage.db import close_database, open_database
from tests.admin_helpers import PASSWORD, Auth, Clock


@pytest.fixture
def settings(tmp_path) -> config.Settings:
    return config.load({
        "DATA_DIR": str(tmp_path),
        "ADMIN_PASSWORD": PASSWORD,
        # Nothing listens here: the status probe fails fast.
        "UPSTREAM_URL": "http://127.0.0.1:9",
        "PRIVATEMODE_LOG_FILE": str(tmp_path / "privatemode-proxy.log"),
    })


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings, clock) -> Flask:
    open_database(settings.database_url)
    app = create_app(settings, {"TESTING": True, "ADMIN_LOCKOUT": Lockout(clock=clock)})
    yield app
    close_database()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(client) -> Auth:
    return Auth(client)


@pytest.fixture
def logged_in(auth) -> Auth:
    response = auth.login()
    assert response.status_code == 302, response.text
    return auth
