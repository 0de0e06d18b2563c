"""The engine's patches check their mitmproxy targets first: a changed mitmproxy stops start-up
instead of leaving the gateway running with mitmproxy's HTML errors, its connection cap or no
upstream timeout."""

from __future__ import annotations

import subprocess
import sys

import h2.connection
import h2.frame_buffer
import httpx
import pytest
from mitmproxy import version
from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import HttpLayer, HttpStream, _http1, _http2

from addons import engine
from tests import procs


def render(status: int, message: str) -> tuple[int, bytes]:
    return status, b"{}"


def _init_without_cap(self, context) -> None:
    self.client = context.client


def _blocks_elsewhere(self, server: bool = False) -> None:
    self.pending_headers = []


def _h2_without_stream_count(self, config=None) -> None:
    self.incoming_buffer = None


async def _read_with_more(self, connection, reader) -> None:
    pass


CHANGES = {
    "make_error_response renamed": (
        engine.ERRORS_PATCH,
        lambda mp: mp.delattr(_http1, "make_error_response"),
    ),
    "make_error_response takes other arguments": (
        engine.ERRORS_PATCH,
        lambda mp: mp.setattr(_http1, "make_error_response", lambda status_code, message, headers: b""),
    ),
    "Http2Server answers errors in its base class only": (
        engine.ERRORS_PATCH,
        lambda mp: mp.delattr(_http2.Http2Server, "_handle_event"),
    ),
    "the connection cap is no longer made in ConnectionHandler.__init__": (
        engine.CONNECTIONS_PATCH,
        lambda mp: mp.setattr(server.ConnectionHandler, "__init__", _init_without_cap),
    ),
    "HttpLayer keeps its streams elsewhere": (
        engine.TIMEOUT_PATCH,
        lambda mp: mp.delitem(HttpLayer.__annotations__, "streams"),
    ),
    "HttpLayer.event_to_child renamed": (
        engine.TIMEOUT_PATCH,
        lambda mp: mp.delattr(HttpLayer, "event_to_child"),
    ),
    "HttpStream's state for waiting on the response renamed": (
        engine.TIMEOUT_PATCH,
        lambda mp: mp.delattr(HttpStream, "state_wait_for_response_headers"),
    ),
    "HttpStream no longer keeps the answer's body it holds in response_body_buf": (
        engine.TIMEOUT_PATCH,
        lambda mp: mp.delitem(HttpStream.__annotations__, "response_body_buf"),
    ),
    "HttpLayer no longer hands out failed connections' errors itself": (
        engine.RECONNECT_PATCH,
        lambda mp: mp.setattr(HttpLayer, "get_connection", lambda self, event, *, reuse=True: iter(())),
    ),
    "the HTTP/1 wait state takes other arguments": (
        engine.HEADS_PATCH,
        lambda mp: mp.setattr(_http1.Http1Connection, "wait", lambda self, event, more: None),
    ),
    "h2 holds an unended header block elsewhere": (
        engine.HEADS_PATCH,
        lambda mp: mp.setattr(h2.frame_buffer.FrameBuffer, "__init__", _blocks_elsewhere),
    ),
    "HttpStream sends its response with other arguments": (
        engine.EARLY_PATCH,
        lambda mp: mp.setattr(HttpStream, "send_response", lambda self: None),
    ),
    "HttpStream no longer streams request bodies through its own state": (
        engine.UPLOADS_PATCH,
        lambda mp: mp.delattr(HttpStream, "state_stream_request_body"),
    ),
    "h2 no longer counts the streams a client opened": (
        engine.CLIENTS_PATCH,
        lambda mp: mp.setattr(h2.connection.H2Connection, "__init__", _h2_without_stream_count),
    ),
    "the connection reading task takes other arguments": (
        engine.CLOSING_PATCH,
        lambda mp: mp.setattr(server.ConnectionHandler, "handle_connection", _read_with_more),
    ),
}


def test_this_mitmproxy_fits():
    engine.check_targets()


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_install_refuses_a_changed_mitmproxy(monkeypatch, change):
    patch, apply = CHANGES[change]
    apply(monkeypatch)
    with pytest.raises(RuntimeError) as caught:
        engine.install(render)
    message = str(caught.value)
    assert f"patch '{patch}'" in message and f"mitmproxy {version.VERSION}" in message
    assert "\n" not in message


# A mitmproxy whose HTTP/1 error function was renamed, then the real launcher.
CHANGED_MITMPROXY = """
import runpy
from mitmproxy.proxy.layers.http import _http1
del _http1.make_error_response
runpy.run_module("addons", run_name="__main__")
"""


def test_a_changed_mitmproxy_stops_the_launcher(tmp_path, upstream):
    env = procs.gateway_env(tmp_path, upstream.port, procs.free_port(), procs.free_port())
    result = subprocess.run(
        [sys.executable, "-c", CHANGED_MITMPROXY],
        cwd=procs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if "does not fit" in line]
    assert f"patch '{engine.ERRORS_PATCH}'" in line and f"mitmproxy {version.VERSION}" in line


def test_the_launcher_starts_with_every_patch(start_gateway):
    gateway = start_gateway()
    assert procs.health(gateway.proc.port).status_code == 200
    # An engine error only the patches make OpenAI-shaped: the admin panel is not running here.
    r = httpx.get(f"{gateway.url}/admin/")
    assert (r.status_code, r.headers["server"], r.json()["error"]["code"]) == (
        503,
        engine.SERVER_HEADER,
        "admin_unavailable",
    )
    assert "Addon error" not in gateway.proc.log() and "does not fit" not in gateway.proc.log()


def test_the_event_loop_refuses_a_changed_asyncio(monkeypatch):
    """The accept loop the gateway's EventLoop repeats (addons/resources.py) is checked the same way."""
    from asyncio import selector_events

    from addons import resources

    resources.check_event_loop()
    monkeypatch.setattr(
        selector_events.BaseSelectorEventLoop, "_accept_connection", lambda self, protocol_factory, sock: None
    )
    with pytest.raises(resources.AsyncioMismatch) as caught:
        resources.check_event_loop()
    assert "_accept_connection" in str(caught.value)
