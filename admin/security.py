"""CSRF protection, security headers and the session cookie's flags."""

from __future__ import annotations

from flask import Flask, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

csrf = CSRFProtect()

# No inline script or style anywhere: every page uses only /admin/static files and inline SVG.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, `Secure` exactly when the client reached us over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        # request.scheme comes from the gateway's X-Forwarded-Proto (see admin/forwarded.py).
        return request.is_secure


def _add_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        # Every page shows operator data and some show a key once: never keep them in a cache.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def _csrf_failed(error: CSRFError):
    return render_template("error.html", title="Form expired", message=(
        "The form could not be accepted because its security token is missing or out of date "
        "(for example after logging in again). Reload the page and try once more."
    )), 400


def init_app(app: Flask) -> None:
    app.session_interface = SessionInterface()
    csrf.init_app(app)
    app.after_request(_add_headers)
    app.register_error_handler(CSRFError, _csrf_failed)
