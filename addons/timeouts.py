"""UPSTREAM_TIMEOUT: requests still waiting for upstream headers after it get a 504.

One sweep a fraction of a second apart checks every waiting request, rather than one timer per
request: a timer per request costs the event loop more than the whole check.
"""

from __future__ import annotations

import asyncio
import time

from mitmproxy import http

from addons import engine, errors

SWEEP_SECONDS = 0.25


class UpstreamTimeouts:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadlines: dict[http.HTTPFlow, float] = {}
        self._task: asyncio.Task | None = None

    def watch(self, flow: http.HTTPFlow) -> None:
        self._deadlines.setdefault(flow, time.monotonic() + self.timeout)

    def forget(self, flow: http.HTTPFlow) -> None:
        self._deadlines.pop(flow, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for flow in [f for f, deadline in self._deadlines.items() if deadline <= now]:
                del self._deadlines[flow]
                if flow.response is None and flow.live:
                    answer_with_timeout(flow)


def answer_with_timeout(flow: http.HTTPFlow) -> None:
    body = errors.error_body("The upstream did not answer in time.", "server_error", "upstream_timeout")
    if not engine.answer_with_timeout(flow.client_conn.id, flow.server_conn, body):
        flow.kill()  # not even connected yet: end it without an answer rather than hang
