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
3. mitmproxy has no upstream read timeout. `end_with_timeout` injects an event at the top of the
   client connection's layers; the HTTP layer (patched to take it) hands the waiting stream a
   504 as if the upstream had sent it, and lets go of the upstream connection. The flow ends
   through the normal hooks and is metered. This happens above TLS, so it works the same for an
   https upstream, whose socket carries TLS records, not HTTP. A request still waiting for its
   upstream connection (a connect or TLS handshake that hangs) gets the timeout as its
   connection error instead, which our renderer (2) turns into the same 504.

Pinned to mitmproxy 12.2 (requirements.txt). `install` first checks that every target is there
and has the shape these patches expect, and stops start-up with `EngineMismatch` naming the patch
and the mitmproxy version otherwise: a patch that silently does not apply would leave the gateway
running with HTML errors, a 5-connection cap or no timeout.

Proofs: tests/test_gateway_tls.py (1), tests/test_gateway_errors.py and
tests/test_gateway_engine_errors.py (2, on HTTP/1.1 and HTTP/2), tests/test_gateway_errors.py and
tests/test_gateway_upstream_tls.py (3, http and https upstreams), tests/test_engine_install.py
(the checks).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import inspect
import weakref
from collections.abc import Callable

from mitmproxy import exceptions, http, version
from mitmproxy.net.http import http1
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
    _http1,
    _http2,
)

from addons.errors import JSON_HEADERS, error_body

MAX_UPSTREAM_CONNECTIONS_PER_CLIENT = 256
SERVER_HEADER = "privatemode-gateway"
# The error a request still connecting upstream gets when its time is up; errors.engine_error
# renders any message with "timed out" in it as our 504.
TIMEOUT_MESSAGE = "upstream timed out (UPSTREAM_TIMEOUT)"

CONNECTIONS_PATCH = "upstream connections per client"
ERRORS_PATCH = "OpenAI-shaped engine errors"
TIMEOUT_PATCH = "upstream timeout"

_handlers: weakref.WeakValueDictionary[str, server.ConnectionHandler] = weakref.WeakValueDictionary()
_render: Callable[[int, str], tuple[int, bytes]] | None = None
_installed = False


class EngineMismatch(RuntimeError, exceptions.OptionsError):
    """mitmproxy is not the version these patches were made for.

    Also an OptionsError: that is the only kind mitmproxy's addon loader lets through, so the
    gateway's load hook stops start-up with it instead of logging it and running unpatched.
    """


def install(render_error: Callable[[int, str], tuple[int, bytes]]) -> None:
    """Check every target, then patch (once). `render_error(status, message) -> (status, body)`."""
    global _render, _installed
    check_targets()
    _render = render_error
    if _installed:
        return
    _installed = True

    original_init = server.ConnectionHandler.__init__

    @functools.wraps(original_init)
    def init(self, context) -> None:
        original_init(self, context)
        self.max_conns = collections.defaultdict(
            lambda: asyncio.Semaphore(MAX_UPSTREAM_CONNECTIONS_PER_CLIENT)
        )
        _handlers[self.client.id] = self

    server.ConnectionHandler.__init__ = init  # also how patch 3 finds a flow's handler

    original_h1_error = _http1.make_error_response

    @functools.wraps(original_h1_error)
    def h1_error(status_code: int, message: str = "") -> bytes:
        return _http1_error(status_code, message)

    _http1.make_error_response = h1_error

    original_h2_handle = _http2.Http2Server._handle_event

    @functools.wraps(original_h2_handle)
    def h2_handle(self, event):
        # A plain function, not a generator: every other event goes straight to mitmproxy's code.
        if isinstance(event, ResponseProtocolError):
            return _http2_error(self, event, original_h2_handle)
        return original_h2_handle(self, event)

    _http2.Http2Server._handle_event = h2_handle

    original_http_handle = HttpLayer._handle_event

    @functools.wraps(original_http_handle)
    def http_handle(self, event):
        if type(event) is _TimedOut:
            return _time_out(self, event)
        return original_http_handle(self, event)

    HttpLayer._handle_event = http_handle


# -- the checks ----------------------------------------------------------------------------


def check_targets() -> None:
    """Raise EngineMismatch unless every patched or relied-on part of mitmproxy is as expected."""
    p = CONNECTIONS_PATCH
    _signature(p, server.ConnectionHandler, "__init__", "self", "context")
    # The semaphores are made per handler in __init__ (we replace them there) and taken per connect.
    _refers(p, server.ConnectionHandler, "__init__", "max_conns")
    _refers(p, server.ConnectionHandler, "open_connection", "max_conns")

    p = ERRORS_PATCH
    _signature(p, _http1, "make_error_response", "status_code", "message")
    # HTTP/1 error pages are made only through that module-level name.
    _refers(p, _http1.Http1Server, "send", "make_error_response")
    _refers(p, _http1.Http1Server, "read_headers", "make_error_response")
    _signature(p, _http2.Http2Server, "_handle_event", "self", "event", own=True)
    # What _http2_error repeats of mitmproxy's HTTP/2 error answer, so that it answers exactly
    # when mitmproxy would.
    _refers(
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
    _signature(p, _http2.Http2Connection, "is_open_for_us", "self", "stream_id")
    _signature(p, ErrorCode, "http_status_code", "self")
    _signature(p, ResponseProtocolError, "__init__", "self", "stream_id", "message", "code")

    p = TIMEOUT_PATCH
    # The event goes in where mitmproxy's own injected messages do: down the handler's layers.
    _signature(p, server.ConnectionHandler, "server_event", "self", "event")
    _refers(p, server.ConnectionHandler, "server_event", "handle_event")
    _signature(p, HttpLayer, "_handle_event", "self", "event", own=True)
    _signature(p, HttpLayer, "event_to_child", "self", "child", "event")
    _annotated(p, HttpLayer, "streams", "connections", "command_sources", "waiting_for_establishment")
    _annotated(p, HttpStream, "flow", "stream_id")
    _refers(p, HttpStream, "__init__", "server_state")
    _signature(p, HttpStream, "state_wait_for_response_headers", "self", "event")
    _refers(p, layer.Layer, "__init__", "_paused")
    if "command" not in getattr(layer.Paused, "_fields", ()):
        _fail(p, "mitmproxy.proxy.layer.Paused has no field 'command'")
    _signature(p, GetHttpConnectionCompleted, "__init__", "self", "command", "reply")
    _signature(p, ResponseHeaders, "__init__", "self", "stream_id", "response", "end_stream")
    _signature(p, ResponseData, "__init__", "self", "stream_id", "data")
    _signature(p, ResponseEndOfMessage, "__init__", "self", "stream_id")
    _signature(p, RequestProtocolError, "__init__", "self", "stream_id", "message", "code")
    if not hasattr(ErrorCode, "CANCEL"):
        _fail(p, "ErrorCode.CANCEL is missing")


def _fail(patch: str, detail: str) -> None:
    raise EngineMismatch(
        f"mitmproxy {version.VERSION} does not fit the gateway's patch '{patch}' "
        f"(made for mitmproxy 12.2, see addons/engine.py): {detail}"
    )


def _target(patch: str, owner, name: str, own: bool = False):
    found = vars(owner).get(name) if own else getattr(owner, name, None)
    if found is None:
        _fail(patch, f"{_name(owner)}.{name} is missing" + (" (or only inherited)" if own else ""))
    return found


def _signature(patch: str, owner, name: str, *params: str, own: bool = False) -> None:
    target = _target(patch, owner, name, own)
    try:
        found = tuple(inspect.signature(target).parameters)  # follows functools.wraps to the original
    except (TypeError, ValueError):
        found = None
    if found != params:
        _fail(patch, f"{_name(owner)}.{name} takes {found}, not {params}")


def _refers(patch: str, owner, name: str, *names: str) -> None:
    code = getattr(inspect.unwrap(_target(patch, owner, name)), "__code__", None)
    missing = [n for n in names if code is None or n not in code.co_names]
    if missing:
        _fail(patch, f"{_name(owner)}.{name} no longer uses {', '.join(missing)}")


def _annotated(patch: str, cls: type, *names: str) -> None:
    missing = [n for n in names if n not in getattr(cls, "__annotations__", {})]
    if missing:
        _fail(patch, f"{_name(cls)} no longer declares {', '.join(missing)}")


def _name(owner) -> str:
    return f"{owner.__module__}.{owner.__name__}" if isinstance(owner, type) else owner.__name__


# -- 2. engine errors ------------------------------------------------------------------------


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


# -- 3. the upstream timeout ----------------------------------------------------------------


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


class _Detached(layer.Layer):
    """Stands in for an HTTP/1 upstream connection given up on: what it still sends or reports
    (its close, a late answer) is dropped instead of reaching a stream that has its answer."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()


async def end_with_timeout(flow: http.HTTPFlow, response: http.Response) -> Outcome:
    """End a request still waiting for its upstream with `response`, through the normal hooks."""
    handler = _handlers.get(flow.client_conn.id)
    if handler is None:
        return Outcome.GONE
    event = _TimedOut(flow, response)
    # How mitmproxy injects messages itself (proxyserver.inject_event): the handler runs the
    # event through every layer and carries out the commands that come back.
    await handler.server_event(event)
    return event.outcome


def _time_out(http_layer: HttpLayer, event: _TimedOut) -> layer.CommandGenerator[None]:
    flow = event.flow
    stream = next((s for s in http_layer.streams.values() if getattr(s, "flow", None) is flow), None)
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
    if flow.server_conn.alpn == b"h2":
        # Other streams may share this connection: reset only this one.
        yield from http_layer.event_to_child(
            upstream, RequestProtocolError(stream.stream_id, TIMEOUT_MESSAGE, ErrorCode.CANCEL)
        )
    else:
        # An HTTP/1 connection carries only this request.
        http_layer.connections[flow.server_conn] = _Detached(http_layer.context.fork())
        yield commands.CloseConnection(flow.server_conn)
    response, sid = event.response, stream.stream_id
    yield from http_layer.event_to_child(stream, ResponseHeaders(sid, response, end_stream=False))
    yield from http_layer.event_to_child(stream, ResponseData(sid, response.content or b""))
    yield from http_layer.event_to_child(stream, ResponseEndOfMessage(sid))


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
