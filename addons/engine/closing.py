"""Patch 5: a connection mitmproxy is told to close is closed, whenever the order comes.

`ConnectionHandler.close_connection` cancels the task that reads the connection
(`handle_connection`), which then tells the layers, closes the socket and forgets it. That task
only expects the cancellation while it reads or drains; when it comes while the task waits for
the handler's event lock (held by a hook's task finishing, which is common under load), the
CancelledError leaves `handle_connection` before any of that: the socket stays open, unread and
unwritten, and the file descriptor is lost until the garbage collector finds the transport.
Every connection we close ourselves (a 431, an idle client) could take that path. The wrapper
finishes what mitmproxy's own code would have done.
"""

from __future__ import annotations

import asyncio
import functools

from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import events, server

from addons.engine import _checks

PATCH = "closing connections"


def check() -> None:
    p = PATCH
    _checks.signature(p, server.ConnectionHandler, "handle_connection", "self", "connection")
    # What its normal end does, which the wrapper repeats: tell the layers, close, forget.
    _checks.refers(
        p, server.ConnectionHandler, "handle_connection", "transports", "server_event", "writer", "pop"
    )
    _checks.refers(p, server.ConnectionHandler, "close_connection", "handler", "cancel")
    _checks.has(p, events, "ConnectionClosed")
    _checks.has(p, ConnectionState, "CLOSED")


def patch() -> None:
    original = server.ConnectionHandler.handle_connection

    @functools.wraps(original)
    async def handle_connection(self, connection) -> None:
        try:
            await original(self, connection)
        except asyncio.CancelledError:
            io = self.transports.pop(connection, None)
            if io is not None:  # mitmproxy's own ending (which forgets the connection) did not run
                connection.state = ConnectionState.CLOSED
                try:
                    if io.writer is not None:
                        io.writer.close()
                except OSError:
                    pass
                # The layers still think it open: a stream waiting on it must hear of the close.
                await self.server_event(events.ConnectionClosed(connection))
            raise

    server.ConnectionHandler.handle_connection = handle_connection
