"""Patch 6: a request refused on its headers is answered before its body is read.

When the `requestheaders` hook sets a response (401, 429, 404, 403, 413, 503), mitmproxy still
reads the whole body into memory (`state_consume_request_body`), runs the `request` hook and only
then answers: twenty unauthenticated 29 MB bodies took the gateway to 1.2 GB. We answer at once,
as mitmproxy does for a response set in the `request` hook (the `responseheaders` hook emulated,
then `send_response`, so the `response` hook meters the refusal), and what still comes of the
body is dropped as it arrives (mitmproxy's `state_errored` consumes silently; once the answer is
out the stream is dropped and the HTTP layer discards data for it). An HTTP/1 answer says
`connection: close`: the connection ends once the client has finished sending (or gives up), and
a client that reads answers while it sends, as curl does, stops sending. An HTTP/2 stream is
left open for the client to end: a reset would make some clients (httpx) raise instead of
reading the answer. A client that asked `Expect: 100-continue` gets the answer instead of the
100 mitmproxy would send first.
"""

from __future__ import annotations

import functools
import time

from mitmproxy.proxy.layers.http import HttpStream, ResponseHeaders, SendHttp
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook

from addons.engine import _checks

PATCH = "answers before the body"


def check() -> None:
    p = PATCH
    _checks.signature(p, HttpStream, "state_wait_for_request_headers", "self", "event")
    # It ends by choosing how the body is read; a `100 Continue` is its only interim answer.
    _checks.refers(
        p, HttpStream, "state_wait_for_request_headers", "HttpRequestHeadersHook", "client_state",
        "state_consume_request_body", "SendHttp", "ResponseHeaders",
    )
    _checks.refers(p, HttpStream, "send_response", "HttpResponseHook", "server_state", "flow_done")
    _checks.signature(p, HttpStream, "send_response", "self", "already_streamed")
    _checks.signature(p, HttpStream, "flow_done", "self")
    _checks.signature(p, HttpStream, "check_killed", "self", "emit_error_hook")
    _checks.has(p, HttpStream, "state_errored", "state_done", "state_consume_request_body")
    _checks.signature(p, HttpResponseHeadersHook, "__init__", "self", "flow")
    _checks.signature(p, SendHttp, "__init__", "self", "event", "connection")


def patch() -> None:
    original = HttpStream.state_wait_for_request_headers

    @functools.wraps(original)
    def wait_for_request_headers(self, event):
        yield from _without_continue_after_an_answer(self, original(self, event))
        if (
            self.client_state == self.state_consume_request_body
            and not event.end_stream
            and self.flow.response is not None
        ):
            yield from _answer_now(self)

    HttpStream.state_wait_for_request_headers = wait_for_request_headers


def _without_continue_after_an_answer(stream: HttpStream, commands):
    """mitmproxy's commands, less the `100 Continue` it sends even when the hook has answered."""
    reply = None
    while True:
        try:
            command = commands.send(reply)
        except StopIteration:
            return
        if (
            stream.flow.response is not None
            and isinstance(command, SendHttp)
            and isinstance(command.event, ResponseHeaders)
            and command.event.response.status_code == 100
        ):
            reply = None
            continue
        reply = yield command


def _answer_now(stream: HttpStream):
    flow = stream.flow
    if not (flow.request.is_http2 or flow.request.is_http3):
        flow.response.headers["connection"] = "close"
    stream.client_state = stream.state_errored  # the rest of the body: read and dropped
    # From here on as mitmproxy answers a response set in the request hook.
    flow.response.timestamp_start = time.time()
    yield HttpResponseHeadersHook(flow)
    if (yield from stream.check_killed(True)):
        return
    yield from stream.send_response()
    if stream.server_state == stream.state_done:
        # send_response ends the flow only when the request is done; ours never will be.
        yield from stream.flow_done()
