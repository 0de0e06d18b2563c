"""Patch 7: a streamed request body can be ended at a limit, with our 413.

mitmproxy counts only bodies it holds (`body_size_limit`); a streamed one passes through
`flow.request.stream`, a callable with no way to end the request: an exception there is logged
as a mitmproxy crash and the client is no longer read, so it hangs. A stream callable raises
`BodyTooLarge` instead, and the request ends as mitmproxy ends a held body over the limit: the
error hook (the request is metered as failed), a 413 to the client (rendered by patch 2) and the
upstream connection, which has had the headers and part of the body, let go.
"""

from __future__ import annotations

import functools

from mitmproxy import flow as mflow
from mitmproxy.proxy.layers.http import (
    DropStream,
    ErrorCode,
    HttpStream,
    RequestProtocolError,
    ResponseProtocolError,
    SendHttp,
)
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook

from addons.engine import _checks

PATCH = "streamed bodies over the limit"


class BodyTooLarge(Exception):
    """Raised by a `flow.request.stream` callable to end the request with a 413."""


def check() -> None:
    p = PATCH
    _checks.signature(p, HttpStream, "state_stream_request_body", "self", "event")
    # The callable is called from there, for each chunk and for the end of the body.
    _checks.refers(p, HttpStream, "state_stream_request_body", "stream", "SendHttp")
    _checks.signature(p, HttpErrorHook, "__init__", "self", "flow")
    _checks.signature(p, DropStream, "__init__", "self", "stream_id")
    _checks.signature(p, RequestProtocolError, "__init__", "self", "stream_id", "message", "code")
    _checks.signature(p, ResponseProtocolError, "__init__", "self", "stream_id", "message", "code")
    _checks.has(p, ErrorCode, "REQUEST_TOO_LARGE")
    _checks.has(p, HttpStream, "state_errored")


def patch() -> None:
    original = HttpStream.state_stream_request_body

    @functools.wraps(original)
    def stream_request_body(self, event):
        try:
            yield from original(self, event)
        except BodyTooLarge as e:
            yield from _too_large(self, str(e))

    HttpStream.state_stream_request_body = stream_request_body


def _too_large(stream: HttpStream, message: str):
    flow, sid, code = stream.flow, stream.stream_id, ErrorCode.REQUEST_TOO_LARGE
    flow.error = mflow.Error(message)
    stream.client_state = stream.server_state = stream.state_errored
    flow.live = False
    yield HttpErrorHook(flow)
    yield SendHttp(ResponseProtocolError(sid, message, code), stream.context.client)
    yield SendHttp(RequestProtocolError(sid, message, code), stream.context.server)
    yield DropStream(sid)
