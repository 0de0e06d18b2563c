"""Requests for /admin: passed to the admin panel on loopback, with only what it may believe.

The admin trusts X-Forwarded-* only on a request carrying a secret it shares with the gateway
(storage/admin_link.py): every client copy of those headers, in any spelling, is removed first.
Anyone may post to the login page, so bodies are bounded here, before they reach the admin.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mitmproxy import http

from addons import errors
from storage import admin_link
from storage.config import Settings

_SECRET_HEADER = admin_link.HEADER.lower().encode()


def route(flow: http.HTTPFlow, client_ip: str, client_used_https: bool, settings: Settings) -> None:
    """Send `flow` to the admin, or answer it (413, 411) when its body is not one to pass on."""
    request = flow.request
    # A body the admin would refuse anyway is refused here, before it reaches the admin's TMPDIR
    # (a 64 MB tmpfs in production).
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > admin_link.MAX_BODY_BYTES:
        flow.response = errors.error_response(
            413, f"Request body exceeds the admin panel's {admin_link.MAX_BODY_BYTES // 1024} KB.",
            "invalid_request_error", "request_too_large",
        )
        return
    if "transfer-encoding" in request.headers:
        # Browsers declare the size of a form: an HTTP/1.1 body of unknown size is refused here,
        # at once, rather than cut by BoundedBody while the admin races to answer.
        flow.response = errors.error_response(
            411, "The admin panel takes request bodies with a Content-Length only.",
            "invalid_request_error", "length_required",
        )
        return
    public_host = request.host_header or ""  # kept by keep_host_header: the name clients use
    request.scheme, request.host, request.port = "http", "127.0.0.1", settings.admin_port
    request.host_header = f"127.0.0.1:{settings.admin_port}"
    request.headers.fields = tuple(f for f in request.headers.fields if not _trusted_by_admin(f[0]))
    request.headers[admin_link.HEADER] = _secret(settings.data_dir)
    request.headers["x-forwarded-host"] = public_host
    request.headers["x-forwarded-for"] = client_ip
    request.headers["x-forwarded-proto"] = "https" if client_used_https else "http"
    request.headers["x-forwarded-prefix"] = "/admin"
    # An HTTP/2 body may come without a declared size: it is cut after the limit instead.
    request.stream = BoundedBody(admin_link.MAX_BODY_BYTES)


@functools.cache
def _secret(data_dir: Path) -> str:
    """The secret shared with the admin, read or made at the first admin request."""
    return admin_link.load_or_create(data_dir)


def _trusted_by_admin(name: bytes) -> bool:
    """A header the admin believes from the gateway: never passed on from a client."""
    lowered = name.lower().replace(b"_", b"-")
    return lowered.startswith(b"x-forwarded-") or lowered in (b"forwarded", _SECRET_HEADER)


class BoundedBody:
    """`flow.request.stream` for the admin: the body up to the limit and one byte more, no further.

    mitmproxy 12.2 gives a stream callable no clean way to end the flow (an exception there is
    logged as a mitmproxy crash and the client's connection is no longer read, so the client
    hangs), so the rest of the body is read and dropped here. The byte past the limit makes the
    admin, which refuses bodies over the limit, answer 413 instead of taking a truncated body.
    """

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit + 1

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.left <= 0:
            # Not b"": an empty chunk goes out as the end of a chunked body.
            return []
        chunk = chunk[: self.left]
        self.left -= len(chunk)
        return chunk
