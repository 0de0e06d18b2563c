"""Login, logout and the one admin user: constant-time check, lockout, idle expiry."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from admin import events
from admin.lockout import Lockout
from admin.sessions import SessionRegistry

bp = Blueprint("auth", __name__, url_prefix="/admin")
login_manager = LoginManager()


class Admin(UserMixin):
    id = "admin"


ADMIN = Admin()


@dataclass
class AuthState:
    password_digest: bytes
    sessions: SessionRegistry
    lockout: Lockout
    idle_timeout: float

    def password_ok(self, given: str) -> bool:
        # Compare digests: constant time, and the length of the password is not leaked either.
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self.password_digest)


def state() -> AuthState:
    return current_app.extensions["admin_auth"]


def init_app(app: Flask, password: str, sessions: SessionRegistry, lockout: Lockout) -> None:
    app.extensions["admin_auth"] = AuthState(
        hashlib.sha256(password.encode()).digest(), sessions, lockout,
        app.config["ADMIN_IDLE_TIMEOUT"],
    )
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    # The login page explains itself; an expired session gets its own message above.
    login_manager.login_message = None
    # Our sessions are permanent, for which flask-login's "strong" mode acts like "basic" anyway;
    # what ends a stolen session here is the server-side list, logout and the idle timeout.
    login_manager.session_protection = "basic"
    app.before_request(_expire_idle_session)
    app.before_request(_require_login)
    app.register_blueprint(bp)


@login_manager.user_loader
def _load_user(user_id: str) -> Admin | None:
    if user_id == ADMIN.id and state().sessions.is_live(session.get("sid")):
        return ADMIN
    return None


def _expire_idle_session() -> None:
    if request.endpoint == "static" or "sid" not in session:
        return
    now = time.time()
    idle = now - session.get("seen", 0)
    if idle > state().idle_timeout or not state().sessions.is_live(session["sid"]):
        state().sessions.end(session["sid"])
        session.clear()
        flash("Your session expired. Please log in again.", "info")
        return
    session["seen"] = now


# Everything else needs the operator logged in: one check here, not one per view.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static"})


def _require_login():
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    return login_manager.unauthorized()


def _safe_next(target: str | None) -> str:
    """Where to go after login: only a path inside the admin, never another site."""
    default = url_for("keys.index")
    if not target:
        return default
    # Control characters: CR or LF would make the Location header invalid (a 500, or a header
    # injected by a laxer server), and urlsplit drops tabs and newlines where a browser may not.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or "\\" in target:
        return default
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("login.html", next=request.args.get("next", ""))
    addr = events.client_addr()
    auth = state()
    left = auth.lockout.remaining(addr)
    if left:
        events.record("login.refused", f"locked out for {int(left) + 1} s more")
        flash(f"Too many failed logins from your address. Try again in {int(left) // 60 + 1} minutes.",
              "error")
        return render_template("login.html", next=request.form.get("next", "")), 429
    if not auth.password_ok(request.form.get("password", "")):
        locked = auth.lockout.failed(addr)
        events.record("login.failed", "address locked out for 5 minutes" if locked else "")
        if locked:
            flash("Too many failed logins from your address. Try again in 5 minutes.", "error")
            return render_template("login.html", next=request.form.get("next", "")), 429
        flash("Wrong password.", "error")
        return render_template("login.html", next=request.form.get("next", "")), 401
    auth.lockout.succeeded(addr)
    # A fresh session: new id, new CSRF token, nothing carried over from before the login.
    auth.sessions.end(session.get("sid"))
    session.clear()
    session["sid"] = auth.sessions.start()
    session["seen"] = time.time()
    session.permanent = True
    login_user(ADMIN)
    events.record("login")
    return redirect(_safe_next(request.form.get("next")))


@bp.route("/logout", methods=["POST"])
def logout():
    state().sessions.end(session.get("sid"))
    logout_user()
    session.clear()
    events.record("logout")
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
