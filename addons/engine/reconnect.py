"""Patch 9: an upstream connection that failed is not handed to later requests.

mitmproxy keeps every upstream connection of a client connection in `HttpLayer.connections`,
failed ones too, and `get_connection` answers a later request for the same upstream with the
failed one's error (`elif connection.error`). An HTTP/1.1 client is told `connection: close`
with its 502 and reconnects; an HTTP/2 client connection went on getting 502 for as long as it
stayed open, though the upstream was back. While mitmproxy picks a connection, failed ones are
kept out of its sight, so a new one is made. A failed connect (no socket was ever opened) is
then forgotten for good, with the transport entry mitmproxy keeps for it until the client leaves;
one that failed later (a TLS handshake) is put back until its socket has been closed, since
mitmproxy may still deliver that close to it.
"""

from __future__ import annotations

import functools

from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import GetHttpConnection, HttpLayer

from addons.engine import _checks
from addons.engine.handlers import handler_of

PATCH = "failed upstream connections"


def check() -> None:
    p = PATCH
    _checks.signature(p, HttpLayer, "get_connection", "self", "event", "reuse")
    # It looks through `connections` and hands out the error of a failed one it finds there.
    _checks.refers(p, HttpLayer, "get_connection", "connections", "connection_spec_matches", "error")
    _checks.annotated(p, HttpLayer, "connections", "waiting_for_establishment")
    _checks.annotated(p, server.ConnectionHandler, "transports")
    # A failed connect is recorded on the connection, whose transport entry stays.
    _checks.refers(p, server.ConnectionHandler, "open_connection", "error", "transports")
    _checks.annotated(p, server.ConnectionIO, "handler")


def patch() -> None:
    original = HttpLayer.get_connection

    @functools.wraps(original)
    def get_connection(self, event: GetHttpConnection, *, reuse: bool = True):
        # A plain function: without a failed connection, mitmproxy's generator as it is.
        failed = [
            c for c in self.connections
            if c is not self.context.client and c.error and c not in self.waiting_for_establishment
        ]
        if not failed:
            return original(self, event, reuse=reuse)
        return _without(self, failed, original(self, event, reuse=reuse))

    HttpLayer.get_connection = get_connection


def _without(http_layer: HttpLayer, failed: list, commands):
    hidden = {c: http_layer.connections.pop(c) for c in failed}
    try:
        yield from commands
    finally:
        handler = handler_of(http_layer.context.client.id)
        for connection, child in hidden.items():
            if not _finished(handler, connection):
                http_layer.connections[connection] = child


def _finished(handler: server.ConnectionHandler | None, connection) -> bool:
    """No event can come for `connection` any more (and mitmproxy's leftovers are let go)."""
    io = handler.transports.get(connection) if handler is not None else None
    if io is None:
        return True  # its socket's reader has ended and forgotten it
    if connection.peername is None and io.handler is not None and io.handler.done():
        del handler.transports[connection]  # a connect that failed: nothing was ever opened
        return True
    return False
