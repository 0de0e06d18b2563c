"""Client connections: at most MAX_CONNECTIONS_PER_CLIENT per address, and none kept for nothing.

Each connection holds a file descriptor; with the open-file limit reached the gateway can neither
accept nor reach its upstream, for everyone. mitmproxy closes a connection only after 600 s
without any traffic (`tcp_timeout`), and a client sending a head a byte at a time is traffic.
Here, once a second (or more often with short timeouts):

- a connection with no request yet (TLS handshake, first head) must have sent a whole request
  head within HEADER_TIMEOUT of its start, and a later head within HEADER_TIMEOUT of its first
  byte (slowloris);
- a connection between requests is closed after CLIENT_IDLE_TIMEOUT (HTTP/1 keep-alive, HTTP/2
  without open streams; trickling data that starts no request does not count);
- a request in progress is never cut here: UPSTREAM_TIMEOUT and UPSTREAM_IDLE_TIMEOUT bound it.

New connections from an address that already has MAX_CONNECTIONS_PER_CLIENT open are closed at
once. Behind a trusted proxy (TRUST_PROXY) every connection comes from the proxy's address, so
the cap is not applied: the proxy has to limit its own clients; the timeouts still apply.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from mitmproxy import connection

from addons import engine
from addons.engine.clients import Activity

log = logging.getLogger("gateway.connections")


class ClientConnections:
    def __init__(
        self, per_client: int | None, idle_timeout: float, header_timeout: float
    ) -> None:
        self.per_client = per_client  # None: no cap
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        # A quarter of the shorter timeout, at most a second: closes come within that of it.
        self.interval = min(1.0, max(0.05, min(idle_timeout, header_timeout) / 4))
        self._open: collections.Counter[str] = collections.Counter()
        self._counted: dict[str, str] = {}  # client id -> address, for the cap
        self._seen: dict[str, tuple[Activity, float]] = {}  # client id -> (activity, since)
        self._task: asyncio.Task | None = None
        self.refused = 0
        self.closed = 0

    # -- mitmproxy hooks ---------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if self.per_client is None or not client.peername:
            return
        address = client.peername[0]
        if self._open[address] >= self.per_client:
            client.error = "too many connections from this address"  # mitmproxy then closes it
            self.refused += 1
            return
        self._open[address] += 1
        self._counted[client.id] = address

    def client_disconnected(self, client: connection.Client) -> None:
        address = self._counted.pop(client.id, None)
        if address is not None:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    def done(self) -> None:
        if self._task:
            self._task.cancel()

    # -- the sweep ----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # one bad reading must not end the sweep: later closes depend on it
                log.exception("checking idle connections failed")

    def check(self) -> None:
        now, wall = time.monotonic(), time.time()
        seen: dict[str, tuple[Activity, float]] = {}
        for handler in engine.live_handlers():
            client = handler.client
            if client.state is connection.ConnectionState.CLOSED or client.error:
                continue
            activity = engine.activity(handler)
            if activity is Activity.OPENING:
                since = now - max(0.0, wall - client.timestamp_start)  # the connection's start
            else:
                previous = self._seen.get(client.id)
                since = previous[1] if previous and previous[0] is activity else now
            seen[client.id] = (activity, since)
            limit = self._limit(activity)
            if limit is not None and now - since >= limit:
                engine.close_client(handler)
                self.closed += 1
        self._seen = seen

    def _limit(self, activity: Activity) -> float | None:
        if activity is Activity.BETWEEN:
            return self.idle_timeout
        if activity in (Activity.OPENING, Activity.HEAD):
            return self.header_timeout
        return None
