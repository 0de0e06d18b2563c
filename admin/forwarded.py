"""X-Forwarded-* believed only from the gateway: requests that carry its secret (storage.admin_link)."""

from __future__ import annotations

import hmac

from werkzeug.middleware.proxy_fix import ProxyFix

from storage import admin_link


class FromGateway:
    """WSGI middleware in front of the app.

    With the gateway's secret, the one hop the gateway adds is trusted (client address, scheme,
    host). Without it the request came from something else on the machine: every X-Forwarded-*
    header is dropped and the socket's address counts, for the lockout and the audit log alike.
    The secret itself never reaches the app, so no page, log or error can show it.
    """

    def __init__(self, app, secret: str):
        self.app = app
        # X-Forwarded-Prefix stays unused: the routes already include /admin.
        self.trusted = ProxyFix(app, x_for=1, x_proto=1, x_host=1)
        self.secret = secret.encode()

    def __call__(self, environ, start_response):
        given = environ.pop(admin_link.WSGI_KEY, "")
        # WSGI hands header values over as latin-1 strings; bytes compare in constant time.
        if given and hmac.compare_digest(given.encode("latin-1", "replace"), self.secret):
            return self.trusted(environ, start_response)
        for key in [k for k in environ if k.startswith("HTTP_X_FORWARDED_") or k == "HTTP_FORWARDED"]:
            del environ[key]
        return self.app(environ, start_response)
