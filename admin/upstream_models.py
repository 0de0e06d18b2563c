"""The upstream's model list (GET /v1/models), offered in the key forms' model picker.

Asked with a deadline and remembered for a while, so that the keys pages neither wait on a slow
upstream nor ask it on every view; when the upstream is down, the forms take typed names alone.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from storage import keys

MAX_BYTES = 1024 * 1024  # a model list is a few kilobytes; more is not one
KEEP_SECONDS = 60.0  # a list that came, until it is asked for again
RETRY_SECONDS = 10.0  # a failure, likewise: a down upstream costs one wait per this long


@dataclass(frozen=True)
class ModelList:
    names: tuple[str, ...]
    error: str | None = None  # why there is no list: shown beside the free-text field


def fetch(url: str, timeout: float, ca_file: Path | None = None) -> ModelList:
    """GET /v1/models from the upstream at `url`, all of it within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https":
        # Unlike the settings tab's liveness probe, this reads what the upstream says: its
        # certificate is checked as the gateway checks it (UPSTREAM_CA_FILE, else the system's roots).
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sock = None

    def left() -> float:
        # The socket's timeout bounds one wait; set before each, it bounds them all to the
        # deadline, so an upstream that sends a byte at a time cannot hold the page.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        return remaining

    try:
        conn.connect()
        sock = conn.sock  # kept: the response takes it over from the connection
        left()
        conn.request("GET", "/v1/models", headers={"User-Agent": "privatemode-gateway-admin",
                                                   "Accept": "application/json"})
        left()
        response = conn.getresponse()
        if response.status != 200:
            return ModelList((), f"the upstream answered HTTP {response.status}")
        body = b""
        while left() and (chunk := response.read1(64 * 1024)):
            body += chunk
            if len(body) > MAX_BYTES:
                return ModelList((), "the upstream's model list is too large")
    except TimeoutError:
        return ModelList((), f"the upstream took more than {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return ModelList((), f"the upstream is not answering ({exc.__class__.__name__}: {exc})")
    finally:
        conn.close()
    names = _names(body)
    return ModelList(names) if names else ModelList((), "the upstream listed no models")


def _names(body: bytes) -> tuple[str, ...]:
    """The ids of an OpenAI model list that a key's list could hold, sorted; others are skipped."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return ()
    names = set()
    for entry in data if isinstance(data, list) else ():
        name = entry.get("id") if isinstance(entry, dict) else None
        try:
            keys.check_models([name])
        except ValueError:
            continue
        names.add(name)
    return tuple(sorted(names))


class Cache:
    """fetch()'s last answer, per upstream, for KEEP_SECONDS (RETRY_SECONDS after a failure)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, ModelList]] = {}

    def get(self, url: str, timeout: float, ca_file: Path | None = None) -> ModelList:
        with self._lock:
            entry = self._entries.get(url)
        if entry is not None and self._clock() < entry[0]:
            return entry[1]
        found = fetch(url, timeout, ca_file)
        keep = RETRY_SECONDS if found.error else KEEP_SECONDS
        with self._lock:
            self._entries[url] = (self._clock() + keep, found)
        return found
