"""Server-side list of live logins, so that logout and expiry end a session for good.

Flask keeps the session in a signed cookie; on its own a copied cookie would still work after
logout. Each login gets a new random id, kept here (hashed) and in the cookie; a cookie whose
id is not listed is not logged in. The list is saved in DATA_DIR so restarts keep logins.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

MAX_SESSIONS = 50


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionRegistry:
    def __init__(self, path: Path | None, max_age: float, clock: Callable[[], float] = time.time):
        self.path = path
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._started: dict[str, float] = self._read()

    def start(self) -> str:
        """A new session id, listed from now on."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            self._started[_digest(sid)] = self.clock()
            if len(self._started) > MAX_SESSIONS:
                oldest = sorted(self._started, key=self._started.get)
                for digest in oldest[: len(self._started) - MAX_SESSIONS]:
                    del self._started[digest]
            self._write()
        return sid

    def is_live(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            started = self._started.get(_digest(sid))
        return started is not None and self.clock() - started < self.max_age

    def end(self, sid: str | None) -> None:
        if not sid:
            return
        with self._lock:
            if self._started.pop(_digest(sid), None) is not None:
                self._write()

    def _prune(self) -> None:
        now = self.clock()
        for digest in [d for d, started in self._started.items() if now - started >= self.max_age]:
            del self._started[digest]

    def _read(self) -> dict[str, float]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # Unreadable or damaged: start with nobody logged in, which is the safe side.
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, int | float)}

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._started, f)
            os.replace(tmp, self.path)
        except OSError:
            # Logins still work from memory; they just will not survive a restart.
            tmp.unlink(missing_ok=True)
