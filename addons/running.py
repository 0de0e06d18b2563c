"""The streams running now, for the usage journal, and cutting what runs on at shutdown.

`RunningStreams` is a mitmproxy addon that the launcher loads after the gateway
(addons/__main__.py): its `responseheaders` hook runs after the gateway's, which put the SSE tap
on a stream. Every flush window the writer asks it for the interrupted row each running stream
would leave, with the last usage seen, and journals them: what a SIGKILL would otherwise lose.

`cut_connections` closes every client connection still open when SHUTDOWN_TIMEOUT ends: mitmproxy
then calls the gateway's `error` hook for each running request, which meters it as interrupted
with the last usage seen, before the `done` hook flushes the writer.
"""

from __future__ import annotations

from mitmproxy import http

from addons.metering import META, Finished, RequestInfo, finished
from addons.routes import Kind


class RunningStreams:
    def __init__(self) -> None:
        self._flows: dict[int, http.HTTPFlow] = {}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        info: RequestInfo | None = flow.metadata.get(META)
        if info is not None and info.tap is not None and info.key_id and info.route.kind is Kind.API:
            self._flows[id(flow)] = flow

    def rows(self) -> list[Finished]:
        """An interrupted row for each stream still running; those that ended are forgotten."""
        rows = []
        for key, flow in list(self._flows.items()):
            info: RequestInfo = flow.metadata[META]
            if info.finished:
                del self._flows[key]
                continue
            model = info.tap.model or info.model
            rows.append(
                finished(info, flow.request.method, flow.response.status_code, info.tap.usage, model,
                         complete=False, metered=True)
            )
        return rows


def cut_connections(proxyserver) -> int:
    """Close every client connection mitmproxy still holds; returns how many."""
    handlers = list(proxyserver.connections.values())
    for handler in handlers:
        try:
            handler.close_connection(handler.client)
        except KeyError:  # it closed on its own meanwhile
            pass
    return len(handlers)
