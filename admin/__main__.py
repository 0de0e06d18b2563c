"""`python -m admin`: serve the admin panel with waitress on 127.0.0.1:ADMIN_PORT only."""

from __future__ import annotations

import logging
import signal
import sys

import waitress
from peewee import PeeweeException

from admin import create_app
from admin.startup import StartupError
from storage import admin_link, config, db

log = logging.getLogger("admin")


def _stop(signum, frame):
    # waitress's loop catches SystemExit, finishes the requests in progress and returns.
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load()
        app = create_app(settings)
    except (config.ConfigError, StartupError) as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 2
    try:
        db.open_database(settings.database_url)
    except (PeeweeException, OSError, ValueError) as exc:
        print(f"admin: cannot open the database {settings.database_url}: {exc}", file=sys.stderr)
        return 2
    try:
        server = waitress.create_server(
            app,
            host="127.0.0.1",
            port=settings.admin_port,
            threads=4,
            ident="",
            # Keep X-Forwarded-*: the app decides whether to believe them (admin/forwarded.py);
            # waitress could only go by the peer's address, and on loopback that proves nothing.
            clear_untrusted_proxy_headers=False,
            # A body larger than the app takes is refused while waitress reads it, so no more
            # than that is spooled to TMPDIR (a 64 MB tmpfs in production). waitress refuses
            # this size and up (a chunked body counted with its framing), the app anything
            # over MAX_BODY_BYTES.
            max_request_body_size=admin_link.MAX_BODY_BYTES + 1,
        )
    except OSError as exc:
        address = f"127.0.0.1:{settings.admin_port}"
        print(f"admin: cannot listen on {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    log.info("admin panel on http://127.0.0.1:%d/admin (reach it through the gateway)", settings.admin_port)
    server.run()
    log.info("admin panel stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
