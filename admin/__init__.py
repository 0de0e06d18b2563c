"""The admin panel: a Flask app served under /admin behind the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, redirect, render_template, url_for
from werkzeug.exceptions import HTTPException

from admin import auth, formatting, security, startup, views
from admin.forwarded import FromGateway
from admin.lockout import Lockout
from admin.sessions import SessionRegistry
from storage import admin_link, config
from storage.config import Settings

IDLE_TIMEOUT = 30 * 60
SESSION_MAX_AGE = 12 * 3600


def create_app(settings: Settings | None = None, test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. The caller binds the database first (storage.db.open_database).

    Raises startup.StartupError when ADMIN_PASSWORD is missing or too short.
    """
    settings = settings or config.load()
    password = startup.admin_password(settings)
    app = Flask(__name__, static_url_path="/admin/static")
    app.config.from_mapping(
        SESSION_COOKIE_NAME="pmg_admin",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # Together with the signed "seen" time: a session ends after this long without a request.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=IDLE_TIMEOUT),
        SESSION_REFRESH_EACH_REQUEST=True,
        ADMIN_IDLE_TIMEOUT=IDLE_TIMEOUT,
        ADMIN_SESSION_MAX_AGE=SESSION_MAX_AGE,
        ADMIN_PROBE_TIMEOUT=1.0,
        # Referrer-Policy: no-referrer means browsers send no Referer to check; the token and
        # SameSite=Strict cookies are the protection.
        WTF_CSRF_SSL_STRICT=False,
        # The token lives as long as the session, which expires on its own.
        WTF_CSRF_TIME_LIMIT=None,
        # The gateway refuses larger bodies before they get here; this holds for anything else.
        MAX_CONTENT_LENGTH=admin_link.MAX_BODY_BYTES,
    )
    if test_config:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = startup.load_secret_key(settings.data_dir)
    # Loopback is open to everything on the machine: only the gateway's secret makes its
    # X-Forwarded-* headers count (see admin/forwarded.py).
    try:
        gateway_secret = admin_link.load_or_create(settings.data_dir)
    except admin_link.SecretError as exc:
        raise startup.StartupError(f"the secret shared with the gateway: {exc}") from None
    app.wsgi_app = FromGateway(app.wsgi_app, gateway_secret)
    app.extensions["admin_settings"] = settings

    sessions_file = app.config.get("ADMIN_SESSIONS_FILE", settings.data_dir / "admin_sessions.json")
    security.init_app(app)
    auth.init_app(
        app,
        password,
        SessionRegistry(sessions_file, app.config["ADMIN_SESSION_MAX_AGE"]),
        app.config.get("ADMIN_LOCKOUT") or Lockout(),
    )
    formatting.init_app(app)
    views.init_app(app)

    @app.get("/admin")
    @app.get("/admin/")
    def home():
        return redirect(url_for("keys.index"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return render_template("error.html", title=f"{error.code} {error.name}", message=error.description), \
            error.code

    return app
