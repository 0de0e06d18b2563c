"""What a client connection is doing, read from mitmproxy's layers (no patch: checked reads).

The gateway closes client connections that hold a file descriptor without using it
(addons/connections.py). Which ones those are, only mitmproxy's HTTP layers know: whether a
request is in progress, whether part of the next request's head has come, whether the connection
has carried any request yet. `activity` reads that from the layers of a connection's handler.
"""

from __future__ import annotations

import enum

import h2.connection
from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import HttpLayer, _http1, _http2

from addons.engine import _checks

PATCH = "client connection activity"


class Activity(enum.Enum):
    OPENING = "opening"  # no request yet: TLS handshake, or the first request's head incomplete
    BETWEEN = "between"  # between requests (HTTP/1 keep-alive, HTTP/2 without open streams)
    HEAD = "head"  # HTTP/1: part of a later request's head has come, not all of it
    BUSY = "busy"  # a request is in progress (or the connection is not HTTP any more)


def check() -> None:
    p = PATCH
    _checks.annotated(p, server.ConnectionHandler, "layer", "client", "transports")
    # The task reading the client's connection, which `close` cancels as mitmproxy's own
    # inactivity timeout (`on_timeout`) does.
    _checks.annotated(p, server.ConnectionIO, "handler")
    _checks.refers(p, server.ConnectionHandler, "handle_client", "transports", "handler")
    _checks.refers(p, server.ConnectionHandler, "on_timeout", "transports", "handler", "cancel")
    _checks.annotated(p, HttpLayer, "streams", "connections")
    _checks.annotated(p, _http1.Http1Connection, "buf", "state")
    _checks.annotated(p, _http1.Http1Server, "stream_id")
    _checks.has(p, _http1.Http1Server, "read_headers")
    _checks.annotated(p, _http2.Http2Connection, "h2_conn")
    _checks.refers(p, h2.connection.H2Connection, "__init__", "highest_inbound_stream_id")


def activity(handler: server.ConnectionHandler) -> Activity:
    http_layer = next((layer for layer in handler.layer.context.layers if isinstance(layer, HttpLayer)), None)
    if http_layer is None:
        return Activity.OPENING  # the TLS handshake, or nothing said yet
    if http_layer.streams:
        return Activity.BUSY
    conn = http_layer.connections.get(handler.client)
    if isinstance(conn, _http1.Http1Server):
        if conn.state != conn.read_headers:
            # Reading the rest of a body already answered (an early refusal), or closing.
            return Activity.BETWEEN
        if conn.stream_id == 1:  # it counts up by 2 with each request
            return Activity.OPENING
        return Activity.HEAD if len(conn.buf) else Activity.BETWEEN
    if isinstance(conn, _http2.Http2Server):
        return Activity.OPENING if conn.h2_conn.highest_inbound_stream_id == 0 else Activity.BETWEEN
    return Activity.BUSY  # not ours to judge


def close(handler: server.ConnectionHandler) -> None:
    """Close the client connection as mitmproxy's own inactivity timeout does."""
    io = handler.transports.get(handler.client)
    if io is not None and io.handler is not None:
        io.handler.cancel("idle")
