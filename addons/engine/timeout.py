"""Patch 3: a request whose upstream does not answer, or stops answering, is ended.

mitmproxy has no upstream read timeout. `end_with_timeout` injects an event at the top of the
client connection's layers; the HTTP layer (patched to take it) hands the waiting stream a 504
as if the upstream had sent it, and lets go of the upstream connection. The flow ends through
the normal hooks and is metered. This happens above TLS, so it works the same for an https
upstream, whose socket carries TLS records, not HTTP. A request still waiting for its upstream
connection (a connect or TLS handshake that hangs) gets the timeout as its connection error
instead, which our renderer (patch 2) turns into the same 504.

`end_stalled` does the same for an answer whose upstream went quiet after its headers
(UPSTREAM_IDLE_TIMEOUT): a body mitmproxy still holds is dropped and the client gets the same
504; a stream the client is already receiving cannot be answered any more, so it is ended as
when the upstream breaks off: the error hook meters it as interrupted, an HTTP/1 client's
connection is closed (its body is incomplete), an HTTP/2 client's stream is reset.
`held_answer_bytes` tells how much of a held body has come, for the sweep to see it move.
"""

from __future__ import annotations

import enum
import functools

from mitmproxy import http
from mitmproxy.proxy import commands, events, layer, server
from mitmproxy.proxy.layers.http import (
    ErrorCode,
    GetHttpConnection,
    GetHttpConnectionCompleted,
    HttpLayer,
    HttpStream,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)

from addons.engine import _checks
from addons.engine.handlers import handler_of

PATCH = "upstream timeout"
# The error a request still connecting upstream gets when its time is up; errors.engine_error
# renders any message with "timed out" in it as our 504.
TIMEOUT_MESSAGE = "upstream timed out (UPSTREAM_TIMEOUT)"
STALL_MESSAGE = "upstream timed out between two pieces of its answer (UPSTREAM_IDLE_TIMEOUT)"
Commands = layer.CommandGenerator[None]


def check() -> None:
    p = PATCH
    # The event goes in where mitmproxy's own injected messages do: down the handler's layers.
    _checks.signature(p, server.ConnectionHandler, "server_event", "self", "event")
    _checks.refers(p, server.ConnectionHandler, "server_event", "handle_event")
    _checks.signature(p, HttpLayer, "_handle_event", "self", "event", own=True)
    _checks.signature(p, HttpLayer, "event_to_child", "self", "child", "event")
    _checks.annotated(p, HttpLayer, "streams", "connections", "command_sources", "waiting_for_establishment")
    _checks.annotated(p, HttpStream, "flow", "stream_id")
    _checks.refers(p, HttpStream, "__init__", "server_state")
    _checks.signature(p, HttpStream, "state_wait_for_response_headers", "self", "event")
    _checks.refers(p, layer.Layer, "__init__", "_paused")
    if "command" not in getattr(layer.Paused, "_fields", ()):
        _checks.fail(p, "mitmproxy.proxy.layer.Paused has no field 'command'")
    _checks.signature(p, GetHttpConnectionCompleted, "__init__", "self", "command", "reply")
    _checks.signature(p, ResponseHeaders, "__init__", "self", "stream_id", "response", "end_stream")
    _checks.signature(p, ResponseData, "__init__", "self", "stream_id", "data")
    _checks.signature(p, ResponseEndOfMessage, "__init__", "self", "stream_id")
    _checks.signature(p, RequestProtocolError, "__init__", "self", "stream_id", "message", "code")
    _checks.has(p, ErrorCode, "CANCEL", "GENERIC_SERVER_ERROR")
    # After the headers: where the body is held or streamed, and how an upstream error ends it.
    _checks.has(p, HttpStream, "state_consume_response_body", "state_stream_response_body")
    _checks.annotated(p, HttpStream, "response_body_buf")
    _checks.signature(p, HttpStream, "handle_protocol_error", "self", "event")
    _checks.signature(p, ResponseProtocolError, "__init__", "self", "stream_id", "message", "code")


def patch() -> None:
    original_http_handle = HttpLayer._handle_event

    @functools.wraps(original_http_handle)
    def http_handle(self, event):
        if type(event) is _TimedOut:
            return _time_out(self, event)
        if type(event) is _Stalled:
            return _stalled(self, event)
        return original_http_handle(self, event)

    HttpLayer._handle_event = http_handle


class Outcome(enum.Enum):
    ANSWERED = "answered"  # the flow has its 504 (or its timeout error) and ends through its hooks
    LATER = "later"  # the flow is inside a hook or not sent upstream yet: ask again shortly
    GONE = "gone"  # nothing of the flow is waiting any more


class _TimedOut(events.Event):
    """Travels down a client connection's layers; only the patched HTTP layer acts on it."""

    def __init__(self, flow: http.HTTPFlow, response: http.Response) -> None:
        self.flow = flow
        self.response = response
        self.outcome = Outcome.LATER  # what it stays if no HTTP layer saw it


class _Stalled(_TimedOut):
    """The same, for an answer whose upstream went quiet after its headers."""


class _Detached(layer.Layer):
    """Stands in for an HTTP/1 upstream connection given up on: what it still sends or reports
    (its close, a late answer) is dropped instead of reaching a stream that has its answer."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


async def end_with_timeout(flow: http.HTTPFlow, response: http.Response) -> Outcome:
    """End a request still waiting for its upstream with `response`, through the normal hooks."""
    return await _inject(flow, _TimedOut(flow, response))


async def end_stalled(flow: http.HTTPFlow, response: http.Response) -> Outcome:
    """End an answer whose upstream went quiet: `response` if the client has had nothing yet,
    else the stream is broken off (see the module's docstring)."""
    return await _inject(flow, _Stalled(flow, response))


async def _inject(flow: http.HTTPFlow, event: _TimedOut) -> Outcome:
    handler = handler_of(flow.client_conn.id)
    if handler is None:
        return Outcome.GONE
    # How mitmproxy injects messages itself (proxyserver.inject_event): the handler runs the
    # event through every layer and carries out the commands that come back.
    await handler.server_event(event)
    return event.outcome


def held_answer_bytes(flow: http.HTTPFlow) -> int | None:
    """How many bytes of `flow`'s answer mitmproxy holds so far, or None once it holds none
    (the answer is complete, or failed, or streamed)."""
    handler = handler_of(flow.client_conn.id)
    if handler is None:
        return None
    for http_layer in handler.layer.context.layers:
        if isinstance(http_layer, HttpLayer) and (stream := _stream_of(http_layer, flow)) is not None:
            if stream.server_state == stream.state_consume_response_body:
                return len(stream.response_body_buf)
            if stream.server_state == stream.state_wait_for_response_headers:
                return 0  # its responseheaders hook is running: the body has not begun
    return None


def _stream_of(http_layer: HttpLayer, flow: http.HTTPFlow) -> HttpStream | None:
    return next((s for s in http_layer.streams.values() if getattr(s, "flow", None) is flow), None)


def _let_go_of_upstream(http_layer: HttpLayer, stream: HttpStream, message: str) -> Commands:
    flow = stream.flow
    upstream = http_layer.connections.get(flow.server_conn)
    if upstream is None:
        return
    if flow.server_conn.alpn == b"h2":
        # Other streams may share this connection: reset only this one.
        yield from http_layer.event_to_child(
            upstream, RequestProtocolError(stream.stream_id, message, ErrorCode.CANCEL)
        )
    else:
        # An HTTP/1 connection carries only this request.
        http_layer.connections[flow.server_conn] = _Detached(http_layer.context.fork())
        yield commands.CloseConnection(flow.server_conn)


def _answer(http_layer: HttpLayer, stream: HttpStream, response: http.Response) -> Commands:
    """Hand the stream `response` as if the upstream had sent it."""
    sid = stream.stream_id
    yield from http_layer.event_to_child(stream, ResponseHeaders(sid, response, end_stream=False))
    yield from http_layer.event_to_child(stream, ResponseData(sid, response.content or b""))
    yield from http_layer.event_to_child(stream, ResponseEndOfMessage(sid))


def _stalled(http_layer: HttpLayer, event: _Stalled) -> layer.CommandGenerator[None]:
    stream = _stream_of(http_layer, event.flow)
    if stream is None or not event.flow.live:
        event.outcome = Outcome.GONE
        return
    if stream._paused is not None:
        return  # inside a hook (responseheaders): LATER
    if stream.server_state == stream.state_consume_response_body:
        # Nothing has gone to the client yet: drop what came and answer as a late upstream.
        event.outcome = Outcome.ANSWERED
        yield from _let_go_of_upstream(http_layer, stream, STALL_MESSAGE)
        stream.response_body_buf.clear()
        stream.server_state = stream.state_wait_for_response_headers
        yield from _answer(http_layer, stream, event.response)
    elif stream.server_state == stream.state_stream_response_body:
        event.outcome = Outcome.ANSWERED
        yield from _let_go_of_upstream(http_layer, stream, STALL_MESSAGE)
        # As when the upstream breaks off mid-stream: error hook, the client's side ended.
        yield from http_layer.event_to_child(
            stream, ResponseProtocolError(stream.stream_id, STALL_MESSAGE, ErrorCode.GENERIC_SERVER_ERROR)
        )
    else:
        event.outcome = Outcome.GONE


def _time_out(http_layer: HttpLayer, event: _TimedOut) -> layer.CommandGenerator[None]:
    flow = event.flow
    stream = _stream_of(http_layer, flow)
    if stream is None or flow.response is not None:
        event.outcome = Outcome.GONE
        return
    if stream._paused is not None:
        # Waiting for a hook (LATER) or for its upstream connection.
        if isinstance(stream._paused.command, GetHttpConnection):
            yield from _stop_waiting_for_connection(http_layer, stream, stream._paused.command, event)
        return
    upstream = http_layer.connections.get(flow.server_conn)
    if upstream is None or stream.server_state != stream.state_wait_for_response_headers:
        return  # not sent upstream yet: LATER
    event.outcome = Outcome.ANSWERED
    yield from _let_go_of_upstream(http_layer, stream, TIMEOUT_MESSAGE)
    yield from _answer(http_layer, stream, event.response)


def _stop_waiting_for_connection(
    http_layer: HttpLayer, stream: HttpStream, command: GetHttpConnection, event: _TimedOut
) -> layer.CommandGenerator[None]:
    """Answer the stream's pending connection request with the timeout as its error.

    The connection attempt itself goes on for whoever else waits for it, or is kept for reuse:
    closing it would leave its error on the connection, which mitmproxy hands to every later
    request of this client connection.
    """
    for waiting in http_layer.waiting_for_establishment.values():
        if any(c is command for c in waiting):
            waiting[:] = [c for c in waiting if c is not command]
            break
    else:
        return  # not an attempt we know of: LATER
    http_layer.command_sources.pop(command, None)
    event.outcome = Outcome.ANSWERED
    yield from http_layer.event_to_child(stream, GetHttpConnectionCompleted(command, (None, TIMEOUT_MESSAGE)))
