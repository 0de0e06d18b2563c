"""Patch 4: a request head is at most 64 KB, on HTTP/1.1 and HTTP/2.

mitmproxy reads an HTTP/1 request head until its blank line, however long (`read_headers`:
"FIXME: protect against header size DoS"): one 100 MB header line took the gateway from 77 to
488 MB. Once more than MAX_HEAD_BYTES of a head have arrived without its end, the client gets
our 431 and the connection is closed; the check runs after each read (64 KB at most), so no more
than one read past the limit is ever held. The same bound covers what a keep-alive client sends
ahead while its request runs (mitmproxy's `wait` state keeps appending it to the same buffer):
beyond it the connection is closed.

On HTTP/2, h2 refuses a decoded header list over 64 KB (its MAX_HEADER_LIST_SIZE, also the
value it advertises), but only once the block has ended: it holds up to 64 CONTINUATION frames
of the block first, 8 MB at mitmproxy's frame size. After each read we look at the block h2
holds and, past MAX_HEAD_BYTES, end the connection as mitmproxy ends it on a protocol error.
"""

from __future__ import annotations

import functools

import h2.connection
import h2.errors
import h2.frame_buffer
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1, _http2

from addons.engine import _checks

PATCH = "request head size"
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = f"Request head over {MAX_HEAD_BYTES // 1024} KB."


def check() -> None:
    p = PATCH
    _checks.signature(p, _http1.Http1Server, "read_headers", "self", "event", own=True)
    _checks.signature(p, _http1.Http1Connection, "wait", "self", "event")
    _checks.signature(p, _http1.Http1Connection, "done", "self", "event")
    _checks.annotated(p, _http1.Http1Connection, "buf", "state")
    # What we rely on: received data is appended to `buf` before the state function runs.
    _checks.refers(p, _http1.Http1Connection, "_handle_event", "buf", "state")
    _checks.signature(p, _http1, "make_error_response", "status_code", "message")
    _checks.signature(p, _http2.Http2Server, "_handle_event", "self", "event", own=True)
    _checks.signature(p, _http2.Http2Connection, "protocol_error", "self", "message", "error_code")
    _checks.annotated(p, _http2.Http2Connection, "h2_conn")
    _checks.refers(p, h2.connection.H2Connection, "__init__", "incoming_buffer")
    _checks.refers(p, h2.frame_buffer.FrameBuffer, "__init__", "_headers_buffer")
    if h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE > MAX_HEAD_BYTES:
        _checks.fail(p, "h2 now accepts header lists over 64 KB")


def patch() -> None:
    original_read_headers = _http1.Http1Server.read_headers

    @functools.wraps(original_read_headers)
    def read_headers(self, event):
        yield from original_read_headers(self, event)
        if self.state == self.read_headers and len(self.buf) > MAX_HEAD_BYTES:
            yield from _refuse_head(self)

    _http1.Http1Server.read_headers = read_headers

    original_wait = _http1.Http1Connection.wait

    @functools.wraps(original_wait)
    def wait(self, event):
        if isinstance(event, events.DataReceived) and len(self.buf) > MAX_HEAD_BYTES:
            return _close(self)
        return original_wait(self, event)

    _http1.Http1Server.wait = wait  # the client side only; mitmproxy's Http1Client keeps its own

    original_h2_handle = _http2.Http2Server._handle_event

    @functools.wraps(original_h2_handle)
    def h2_handle(self, event):
        # A plain function: only received data needs a look afterwards.
        if type(event) is events.DataReceived:
            return _h2_data(self, event, original_h2_handle)
        return original_h2_handle(self, event)

    _http2.Http2Server._handle_event = h2_handle


def _refuse_head(conn: _http1.Http1Server):
    yield commands.SendData(conn.conn, _http1.make_error_response(431, HEAD_TOO_LARGE))
    yield from _close(conn)


def _close(conn: _http1.Http1Server):
    conn.buf = type(conn.buf)()  # let the bytes go now, not when the connection object does
    conn.state = conn.done
    yield commands.CloseConnection(conn.conn)


def _h2_data(conn: _http2.Http2Server, event: events.DataReceived, original):
    yield from original(conn, event)
    if "_handle_event" in vars(conn):
        return  # mitmproxy has closed the connection (it then replaces _handle_event)
    held = conn.h2_conn.incoming_buffer._headers_buffer
    if held and sum(len(frame.data) for frame in held) > MAX_HEAD_BYTES:
        held.clear()
        yield from conn.protocol_error(HEAD_TOO_LARGE, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
