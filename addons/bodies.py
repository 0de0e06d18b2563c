"""Request bodies: how many bytes of them the gateway holds at once, and the uploads it streams.

A JSON body (chat, embeddings, messages) is held whole, because its `model` and `stream` are read
and `stream_options` may be added before it goes upstream; mitmproxy also holds any other body
of a request that is not streamed. Each held body takes its declared size from BODY_MEMORY_MB
when it is admitted, on its headers, or the largest size allowed (MAX_BODY_MB) when its size is
not declared (chunked, or HTTP/2 without content-length) until it has arrived. A body that does
not fit is refused with a 503 and Retry-After before a byte of it is read. The room is given
back when the upstream's answer starts (the body has been sent; the gateway then drops its copy)
or when the request fails.

Uploads (audio, documents) are never held: they pass through chunk by chunk, counted, and one
whose size was not declared is cut with a 413 at MAX_BODY_MB (engine.BodyTooLarge).
"""

from __future__ import annotations

from mitmproxy import http

from addons import engine
from addons.metering import RequestInfo

RETRY_AFTER_SECONDS = 1


class BodyBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.held = 0
        self._flows: dict[http.HTTPFlow, int] = {}

    def __contains__(self, flow: http.HTTPFlow) -> bool:
        return flow in self._flows

    def fits(self, size: int) -> bool:
        return self.held + size <= self.limit

    def take(self, flow: http.HTTPFlow, size: int) -> None:
        """Count `size` bytes for `flow` (after fits(): the event loop runs nothing in between)."""
        self.held += size - self._flows.get(flow, 0)
        self._flows[flow] = size

    def settle(self, flow: http.HTTPFlow, size: int) -> None:
        """The body has arrived: count what it is, not what was set aside for it."""
        if flow in self._flows:
            self.take(flow, size)

    def release(self, flow: http.HTTPFlow) -> None:
        self.held -= self._flows.pop(flow, 0)


def held_size(request: http.Request, largest: int) -> int:
    """The room a body that will be held needs: its declared size, or `largest` if unknown."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        return int(declared)
    if request.is_http2 or request.is_http3:
        # No content-length: a body may still follow, unless the method never has one.
        return 0 if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") else largest
    return largest if "transfer-encoding" in request.headers else 0


class StreamedUpload:
    """`flow.request.stream` for uploads: each chunk is counted and forwarded; past `limit` the
    request is ended with a 413 (one with a declared size over the limit never gets here)."""

    __slots__ = ("info", "limit")

    def __init__(self, info: RequestInfo, limit: int) -> None:
        self.info = info
        self.limit = limit

    def __call__(self, chunk: bytes) -> bytes:
        chunk = self.info.count_upload(chunk)
        if self.info.request_bytes > self.limit:
            raise engine.BodyTooLarge(f"Request body exceeds {self.limit // (1024 * 1024)} MB.")
        return chunk
