"""The process's own resources: as many open files as the system allows, and running out of
them without burning the CPU or flooding the log.

With the open-file limit reached, Python 3.12's accept loop (`_accept_connection`) goes on
calling accept() after EMFILE, up to 100 times per readiness of the listening socket, reporting
each failure and scheduling a retry for each: the retries pile up to some 10,000 failed accepts a
second, 60% of a core, each a traceback through mitmproxy's exception handler (1.5 MB of log a
second). `EventLoop` stops at the first such failure, logs one line and retries a second later;
`ResourceErrorFilter` lets one record about running out, from anywhere else, through per second,
without its traceback, saying how many more it held back.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import resource
import time
from asyncio import constants, selector_events

from mitmproxy import exceptions

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
log = logging.getLogger("gateway")


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (the most an unprivileged process may have)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft


def _resource_error(record: logging.LogRecord) -> OSError | None:
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
        return error
    return None


class ResourceErrorFilter(logging.Filter):
    """At most one record a second about running out of files or memory; one instance may sit
    on several handlers, which then share the second."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__()
        self.every = every
        self._last = float("-inf")
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = _resource_error(record)
        if error is None:
            return True
        now = time.monotonic()
        if now - self._last < self.every:
            self._held_back += 1
            return False
        self._last = now
        more = f" ({self._held_back} more like it not logged)" if self._held_back else ""
        self._held_back = 0
        record.msg = f"{record.getMessage()}: {error}{more}"
        record.args = ()
        record.exc_info = record.exc_text = None  # the traceback adds nothing but bytes
        return True


class EventLoop(asyncio.SelectorEventLoop):
    """The default event loop, but an accept() that fails for want of files is retried once a
    second, not once per waiting connection (see the module's docstring)."""

    def _accept_connection(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        # CPython 3.12's method (asyncio/selector_events.py), with one change: `return` once a
        # failure for want of resources has been logged and its retry scheduled.
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    raise
                # Said here, once, without a traceback (the retry below comes a second later).
                log.error("cannot accept connections: %s; trying again in 1 s", exc)
                self._remove_reader(sock.fileno())
                self.call_later(
                    1, self._start_serving, protocol_factory, sock, sslcontext,
                    server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout,
                )
                return None
            else:
                accept = self._accept_connection2(
                    protocol_factory, conn, {"peername": addr}, sslcontext, server,
                    ssl_handshake_timeout, ssl_shutdown_timeout,
                )
                self.create_task(accept)
        return None


class AsyncioMismatch(RuntimeError, exceptions.OptionsError):
    """asyncio's accept loop is not the one EventLoop repeats: start-up stops (as on an
    engine mismatch) rather than run a copy of code that has changed under it."""


def check_event_loop() -> None:
    """Raise AsyncioMismatch unless asyncio's accept loop is still the one EventLoop repeats."""
    base = selector_events.BaseSelectorEventLoop
    expected = {
        "_accept_connection": (
            "self", "protocol_factory", "sock", "sslcontext", "server", "backlog",
            "ssl_handshake_timeout", "ssl_shutdown_timeout",
        ),
        "_start_serving": (
            "self", "protocol_factory", "sock", "sslcontext", "server", "backlog",
            "ssl_handshake_timeout", "ssl_shutdown_timeout",
        ),
        "_accept_connection2": (
            "self", "protocol_factory", "conn", "extra", "sslcontext", "server",
            "ssl_handshake_timeout", "ssl_shutdown_timeout",
        ),
    }
    for name, params in expected.items():
        found = tuple(inspect.signature(getattr(base, name)).parameters)
        if found != params:
            raise AsyncioMismatch(f"asyncio's {name} takes {found}, not {params}: see addons/resources.py")
    used = base._accept_connection.__code__.co_names
    needed = ("accept", "_remove_reader", "call_later", "_start_serving", "_accept_connection2")
    if missing := [n for n in needed if n not in used]:
        raise AsyncioMismatch(f"asyncio's _accept_connection no longer uses {missing} (addons/resources.py)")
