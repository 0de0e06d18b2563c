"""Patch 2: errors mitmproxy makes itself, OpenAI-shaped.

Unreachable upstream, body too large, malformed HTTP: mitmproxy answers them with an HTML page,
`Server: mitmproxy` and raw errno text. We render them with our status, JSON and our server
header, on both protocols. Each protocol answers them in its own code: HTTP/1 through
`_http1.make_error_response` (replaced), HTTP/2 inside `Http2Connection._handle_event`, which
picks the status itself and hard-codes `content-type: text/html`; we answer a client's HTTP/2
stream before it gets there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import ErrorCode, ResponseProtocolError, _http1, _http2

from addons.engine import _checks
from addons.errors import JSON_HEADERS, error_body

PATCH = "OpenAI-shaped engine errors"
SERVER_HEADER = "privatemode-gateway"

_render: Callable[[int, str], tuple[int, bytes]] | None = None


def set_renderer(render: Callable[[int, str], tuple[int, bytes]]) -> None:
    global _render
    _render = render


def check() -> None:
    p = PATCH
    _checks.signature(p, _http1, "make_error_response", "status_code", "message")
    # HTTP/1 error pages are made only through that module-level name.
    _checks.refers(p, _http1.Http1Server, "send", "make_error_response")
    _checks.refers(p, _http1.Http1Server, "read_headers", "make_error_response")
    _checks.signature(p, _http2.Http2Server, "_handle_event", "self", "event", own=True)
    # What _http2_error repeats of mitmproxy's HTTP/2 error answer, so that it answers exactly
    # when mitmproxy would.
    _checks.refers(
        p,
        _http2.Http2Connection,
        "_handle_event",
        "ResponseProtocolError",
        "http_status_code",
        "is_open_for_us",
        "headers_sent",
        "send_headers",
        "send_data",
        "data_to_send",
    )
    _checks.signature(p, _http2.Http2Connection, "is_open_for_us", "self", "stream_id")
    _checks.signature(p, ErrorCode, "http_status_code", "self")
    _checks.signature(p, ResponseProtocolError, "__init__", "self", "stream_id", "message", "code")


def patch() -> None:
    original_h1_error = _http1.make_error_response

    @functools.wraps(original_h1_error)
    def h1_error(status_code: int, message: str = "") -> bytes:
        return http1_error(status_code, message)

    _http1.make_error_response = h1_error

    original_h2_handle = _http2.Http2Server._handle_event

    @functools.wraps(original_h2_handle)
    def h2_handle(self, event):
        # A plain function, not a generator: every other event goes straight to mitmproxy's code.
        if isinstance(event, ResponseProtocolError):
            return _http2_error(self, event, original_h2_handle)
        return original_h2_handle(self, event)

    _http2.Http2Server._handle_event = h2_handle


def rendered(status: int, message: str) -> tuple[int, bytes]:
    if _render is None:
        return status, error_body("Gateway error.", "server_error", None)
    return _render(status, message)


def http1_error(status: int, message: str = "") -> bytes:
    status, body = rendered(status, message)
    response = http.Response.make(
        status, body, {**JSON_HEADERS, "server": SERVER_HEADER, "connection": "close"}
    )
    return http1.assemble_response(response)


def _http2_error(conn: _http2.Http2Server, event: ResponseProtocolError, original):
    """Answer the stream as mitmproxy would (same conditions), but with our status and headers."""
    status = event.code.http_status_code()
    stream = conn.h2_conn.streams.get(event.stream_id)
    if status is None or not conn.is_open_for_us(event.stream_id) or stream.state_machine.headers_sent:
        yield from original(conn, event)  # no answer possible or wanted: mitmproxy resets the stream
        return
    status, body = rendered(status, event.message)
    headers = [
        (b":status", b"%d" % status),
        (b"server", SERVER_HEADER.encode()),
        (b"content-type", JSON_HEADERS["content-type"].encode()),
        (b"content-length", b"%d" % len(body)),
    ]
    conn.h2_conn.send_headers(event.stream_id, headers)
    conn.h2_conn.send_data(event.stream_id, body, end_stream=True)
    yield commands.SendData(conn.conn, conn.h2_conn.data_to_send())
