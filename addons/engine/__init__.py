"""Where mitmproxy 12 must behave like a gateway: every patch of its internals, in one package.

1. Upstream connections per client (handlers.py). mitmproxy caps each client connection at 5
   upstream connections; one HTTP/2 client with 20 concurrent streams then stalls behind 5 of
   them. The cap is raised (the global token bucket protects the upstream), and each connection
   handler is registered by its client's id: that is how the other patches reach a flow's layers.
2. OpenAI-shaped engine errors (rendering.py). Errors mitmproxy makes itself (unreachable
   upstream, body too large, malformed HTTP) come as an HTML page with `Server: mitmproxy` and
   raw errno text; they are rendered with our status, JSON and server header on both protocols.
3. Upstream timeout (timeout.py). mitmproxy has no upstream read timeout: `end_with_timeout`
   hands a request still waiting for its upstream a 504 through the normal hooks, above TLS, and
   lets go of the upstream connection; `end_stalled` ends an answer whose upstream went quiet
   after its headers (a 504 if the client has had nothing yet, else the stream broken off).
4. Request head size (heads.py). mitmproxy reads an HTTP/1 head however long it is, and h2 holds
   an unended HTTP/2 header block of up to 8 MB: past 64 KB, the client gets a 431 (HTTP/1) or
   the connection ends (HTTP/2), while the head arrives.
5. Closing connections (closing.py). A connection told to close while its reading task waits for
   the handler's lock stayed open and its file descriptor was lost: it is closed and forgotten.
6. Answers before the body (early.py). A request the `requestheaders` hook refused (401, 429...)
   was answered only after its whole body had been read into memory: it is answered at once, the
   `response` hook still runs (the refusal is metered), and the rest of the body is dropped.
7. Streamed bodies over the limit (uploads.py). A `flow.request.stream` callable had no way to
   end a request: it raises `BodyTooLarge`, and the request ends with a 413 as a held body over
   mitmproxy's limit does; uploads of unknown size are then streamed instead of held.
8. Client connection activity (clients.py, reads only). Whether a client connection has a
   request in progress, is between requests, or is slow to send a head, as the gateway's idle
   and header timeouts need to know (addons/connections.py); checked like the patches.
9. Failed upstream connections (reconnect.py). mitmproxy handed a failed upstream connection's
   error to every later request of the client connection: an HTTP/2 client kept getting 502
   after the upstream was back. A new connection is made instead.

Pinned to mitmproxy 12.2 (requirements.txt). `install` first checks that every target is there
and has the shape these patches expect, and stops start-up with `EngineMismatch` naming the patch
and the mitmproxy version otherwise: a patch that silently does not apply would leave the gateway
running with HTML errors, a 5-connection cap or no timeout.

Proofs: tests/test_gateway_tls.py (1); tests/test_gateway_errors.py and
tests/test_gateway_engine_errors.py (2, on HTTP/1.1 and HTTP/2); tests/test_gateway_errors.py,
tests/test_gateway_upstream_tls.py and tests/test_gateway_stalls.py (3, http and https
upstreams); tests/test_gateway_memory.py (4 to 7); tests/test_gateway_connections.py (5, 8);
tests/test_gateway_upstream_recovery.py (9);
tests/test_engine_install.py (the checks).
"""

from __future__ import annotations

from collections.abc import Callable

from addons.engine import clients, closing, early, handlers, heads, reconnect, rendering, timeout, uploads
from addons.engine._checks import EngineMismatch
from addons.engine.clients import Activity, activity
from addons.engine.clients import close as close_client
from addons.engine.handlers import MAX_UPSTREAM_CONNECTIONS_PER_CLIENT, live_handlers
from addons.engine.rendering import SERVER_HEADER
from addons.engine.timeout import TIMEOUT_MESSAGE, Outcome, end_stalled, end_with_timeout, held_answer_bytes
from addons.engine.uploads import BodyTooLarge

CONNECTIONS_PATCH = handlers.PATCH
ERRORS_PATCH = rendering.PATCH
TIMEOUT_PATCH = timeout.PATCH
HEADS_PATCH = heads.PATCH
CLOSING_PATCH = closing.PATCH
EARLY_PATCH = early.PATCH
UPLOADS_PATCH = uploads.PATCH
CLIENTS_PATCH = clients.PATCH  # reads only: nothing to patch
RECONNECT_PATCH = reconnect.PATCH

# In the order they are checked and applied.
_PATCHES = (handlers, rendering, timeout, heads, closing, early, uploads, reconnect)
# Internals read without patching: checked all the same.
_READS = (clients,)
_installed = False

__all__ = [
    "CLIENTS_PATCH",
    "Activity",
    "activity",
    "close_client",
    "live_handlers",
    "CLOSING_PATCH",
    "CONNECTIONS_PATCH",
    "EARLY_PATCH",
    "ERRORS_PATCH",
    "HEADS_PATCH",
    "RECONNECT_PATCH",
    "MAX_UPSTREAM_CONNECTIONS_PER_CLIENT",
    "SERVER_HEADER",
    "TIMEOUT_MESSAGE",
    "TIMEOUT_PATCH",
    "UPLOADS_PATCH",
    "BodyTooLarge",
    "EngineMismatch",
    "Outcome",
    "check_targets",
    "end_stalled",
    "end_with_timeout",
    "held_answer_bytes",
    "install",
]


def install(render_error: Callable[[int, str], tuple[int, bytes]]) -> None:
    """Check every target, then patch (once). `render_error(status, message) -> (status, body)`."""
    global _installed
    check_targets()
    rendering.set_renderer(render_error)
    if _installed:
        return
    _installed = True
    for module in _PATCHES:
        module.patch()


def check_targets() -> None:
    """Raise EngineMismatch unless every patched or relied-on part of mitmproxy is as expected."""
    for module in (*_PATCHES, *_READS):
        module.check()
