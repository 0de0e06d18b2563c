"""The three places where mitmproxy 12 must behave like a gateway, patched once and in one place.

1. mitmproxy caps each client connection at 5 upstream connections (a per-handler semaphore).
   The upstream speaks HTTP/1.1, so one HTTP/2 client with 20 concurrent streams needs 20
   upstream connections; with the cap, 15 of them wait for others to finish, which stalls
   long streams. We raise the cap (MAX_UPSTREAM_CONNECTIONS_PER_CLIENT); the global token
   bucket, not a connection count, is what protects the upstream.
2. Errors mitmproxy makes itself (unreachable upstream, body too large, malformed HTTP) come as
   an HTML page with `Server: mitmproxy` and raw errno text. We render them OpenAI-shaped, with
   our status, JSON and our server header, on both protocols. Each protocol answers them in its
   own code: HTTP/1 through `_http1.make_error_response` (replaced), HTTP/2 inside
   `Http2Connection._handle_event`, which picks the status itself and hard-codes
   `content-type: text/html`; we answer a client's HTTP/2 stream before it gets there.
3. mitmproxy has no upstream read timeout. `answer_with_timeout` feeds a 504 into the waiting
   upstream connection's reader, so the flow ends through the normal hooks and is metered.

Pinned to mitmproxy 12.2 (requirements.txt); tests/test_gateway_errors.py proves each patch,
tests/test_gateway_engine_errors.py the engine errors on HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, server
from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1, _http2

from addons.errors import JSON_HEADERS, error_body

MAX_UPSTREAM_CONNECTIONS_PER_CLIENT = 256
SERVER_HEADER = "privatemode-gateway"

_handlers: weakref.WeakValueDictionary[str, server.ConnectionHandler] = weakref.WeakValueDictionary()
_render: Callable[[int, str], tuple[int, bytes]] | None = None
_installed = False


def install(render_error: Callable[[int, str], tuple[int, bytes]]) -> None:
    """Apply the patches (idempotent); `render_error(status, message) -> (status, body)`."""
    global _render, _installed
    _render = render_error
    if _installed:
        return
    _installed = True
    original_init = server.ConnectionHandler.__init__

    def init(self, context) -> None:
        original_init(self, context)
        self.max_conns = collections.defaultdict(
            lambda: asyncio.Semaphore(MAX_UPSTREAM_CONNECTIONS_PER_CLIENT)
        )
        _handlers[self.client.id] = self

    server.ConnectionHandler.__init__ = init
    _http1.make_error_response = _http1_error
    original_h2_handle = _http2.Http2Server._handle_event

    def h2_handle(self, event):
        # A plain function, not a generator: every other event goes straight to mitmproxy's code.
        if isinstance(event, ResponseProtocolError):
            return _http2_error(self, event, original_h2_handle)
        return original_h2_handle(self, event)

    _http2.Http2Server._handle_event = h2_handle


def _rendered(status: int, message: str) -> tuple[int, bytes]:
    if _render is None:
        return status, error_body("Gateway error.", "server_error", None)
    return _render(status, message)


def _http1_error(status: int, message: str = "") -> bytes:
    status, body = _rendered(status, message)
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
    status, body = _rendered(status, event.message)
    headers = [
        (b":status", b"%d" % status),
        (b"server", SERVER_HEADER.encode()),
        (b"content-type", JSON_HEADERS["content-type"].encode()),
        (b"content-length", b"%d" % len(body)),
    ]
    conn.h2_conn.send_headers(event.stream_id, headers)
    conn.h2_conn.send_data(event.stream_id, body, end_stream=True)
    yield commands.SendData(conn.conn, conn.h2_conn.data_to_send())


def answer_with_timeout(client_id: str, server_conn, body: bytes) -> bool:
    """End a request still waiting for upstream headers with a 504 made by the gateway.

    The bytes are fed to the upstream connection's reader, followed by EOF, so mitmproxy parses
    them as the upstream's answer and closes that connection. Returns False if it was too late.
    """
    handler = _handlers.get(client_id)
    transport = handler.transports.get(server_conn) if handler else None
    reader = getattr(transport, "reader", None)
    if not isinstance(reader, asyncio.StreamReader) or reader.at_eof():
        return False
    response = http.Response.make(504, body, {**JSON_HEADERS, "connection": "close"})
    reader.feed_data(http1.assemble_response(response))
    reader.feed_eof()
    return True
