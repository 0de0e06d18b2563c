"""UPSTREAM_TIMEOUT and UPSTREAM_IDLE_TIMEOUT: an upstream that does not answer, or stops.

A request still waiting for the upstream's headers after UPSTREAM_TIMEOUT gets a 504. Once the
headers have come, the answer must keep moving: with no new byte of its body for
UPSTREAM_IDLE_TIMEOUT, a body the gateway still holds is dropped for the same 504, and a stream
the client is already reading is broken off and metered as interrupted.

One sweep a fraction of a second apart checks every watched request, rather than one timer per
request: a timer per request costs the event loop more than the whole check. How a request is
ended, whatever the upstream's protocol or TLS, is the engine's job (engine.end_with_timeout,
engine.end_stalled). A stream's progress is its SSE tap's byte count; a held body's is the
number of bytes mitmproxy holds of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from mitmproxy import http

from addons import engine, errors
from addons.sse import SseUsageTap

SWEEP_SECONDS = 0.25
log = logging.getLogger("gateway.timeouts")


class UpstreamTimeouts:
    def __init__(self, timeout: float, idle_timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self._deadlines: dict[http.HTTPFlow, float] = {}
        # Answers under way: (their tap, or None for a held body; bytes seen; since when).
        self._answers: dict[http.HTTPFlow, tuple[SseUsageTap | None, int, float]] = {}
        self._task: asyncio.Task | None = None

    def watch(self, flow: http.HTTPFlow) -> None:
        self._deadlines.setdefault(flow, time.monotonic() + self.timeout)

    def forget(self, flow: http.HTTPFlow) -> None:
        self._deadlines.pop(flow, None)
        self._answers.pop(flow, None)

    def answer_started(self, flow: http.HTTPFlow, tap: SseUsageTap | None) -> None:
        """The upstream's headers have come: from now on, its body must keep moving."""
        self._deadlines.pop(flow, None)
        self._answers[flow] = (tap, 0, time.monotonic())

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
                    if await self._end(flow, engine.end_with_timeout) is engine.Outcome.LATER:
                        self._deadlines.setdefault(flow, now)  # inside a hook: the next sweep tries again
            for flow, entry in self._stalled(now):
                if await self._end(flow, engine.end_stalled) is engine.Outcome.LATER:
                    self._answers.setdefault(flow, entry)

    def _stalled(self, now: float) -> list[tuple[http.HTTPFlow, tuple]]:
        """Answers with no new byte for idle_timeout, taken off the watch; finished ones forgotten."""
        stalled = []
        for flow, (tap, seen, since) in list(self._answers.items()):
            received = tap.received if tap is not None else engine.held_answer_bytes(flow)
            if not flow.live or received is None or (tap is not None and tap.closed):
                del self._answers[flow]
            elif received != seen:
                self._answers[flow] = (tap, received, now)
            elif now - since >= self.idle_timeout:
                stalled.append((flow, self._answers.pop(flow)))
        return stalled

    async def _end(
        self, flow: http.HTTPFlow, end: Callable[[http.HTTPFlow, http.Response], Awaitable[engine.Outcome]]
    ) -> engine.Outcome:
        try:
            return await end(flow, timeout_response())
        except Exception:
            # One flow's failure must not end the sweep: every later timeout depends on it.
            log.exception("ending a request whose upstream timed out failed")
            return engine.Outcome.GONE


def timeout_response() -> http.Response:
    return http.Response.make(
        504, errors.UPSTREAM_TIMEOUT_BODY, {**errors.JSON_HEADERS, "server": engine.SERVER_HEADER}
    )
