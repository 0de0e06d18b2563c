"""Patch 1: every client connection's handler, found by its client's id, with a wider upstream cap.

mitmproxy caps each client connection at 5 upstream connections (a per-handler semaphore). The
upstream speaks HTTP/1.1, so one HTTP/2 client with 20 concurrent streams needs 20 upstream
connections; with the cap, 15 of them wait for others to finish, which stalls long streams. We
raise the cap; the global token bucket, not a connection count, is what protects the upstream.
The same wrapper registers the handler, which is how the other patches reach a flow's layers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import weakref

from mitmproxy.proxy import server

from addons.engine import _checks

PATCH = "upstream connections per client"
MAX_UPSTREAM_CONNECTIONS_PER_CLIENT = 256

_handlers: weakref.WeakValueDictionary[str, server.ConnectionHandler] = weakref.WeakValueDictionary()


def handler_of(client_id: str) -> server.ConnectionHandler | None:
    return _handlers.get(client_id)


def live_handlers() -> list[server.ConnectionHandler]:
    return list(_handlers.values())


def check() -> None:
    p = PATCH
    _checks.signature(p, server.ConnectionHandler, "__init__", "self", "context")
    # The semaphores are made per handler in __init__ (we replace them there) and taken per connect.
    _checks.refers(p, server.ConnectionHandler, "__init__", "max_conns")
    _checks.refers(p, server.ConnectionHandler, "open_connection", "max_conns")


def patch() -> None:
    original_init = server.ConnectionHandler.__init__

    @functools.wraps(original_init)
    def init(self, context) -> None:
        original_init(self, context)
        self.max_conns = collections.defaultdict(
            lambda: asyncio.Semaphore(MAX_UPSTREAM_CONNECTIONS_PER_CLIENT)
        )
        _handlers[self.client.id] = self

    server.ConnectionHandler.__init__ = init
