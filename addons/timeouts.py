"""UPSTREAM_TIMEOUT: requests still waiting for upstream headers after it get a 504.

One sweep a fraction of a second apart checks every waiting request, rather than one timer per
request: a timer per request costs the event loop more than the whole check. How a waiting
request is ended, whatever the upstream's protocol or TLS, is engine.end_with_timeout's job.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from addons import engine, errors

SWEEP_SECONDS = 0.25
log = logging.getLogger("gateway.timeouts")


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
                if flow.response is not None or not flow.live:
                    continue
                try:
                    outcome = await engine.end_with_timeout(flow, timeout_response())
                except Exception:
                    # One flow's failure must not end the sweep: every later timeout depends on it.
                    log.exception("ending a request that timed out failed")
                    continue
                if outcome is engine.Outcome.LATER:
                    # Inside one of its hooks for the moment: the next sweep tries again.
                    self._deadlines.setdefault(flow, now)


def timeout_response() -> http.Response:
    return http.Response.make(
        504, errors.UPSTREAM_TIMEOUT_BODY, {**errors.JSON_HEADERS, "server": engine.SERVER_HEADER}
    )
