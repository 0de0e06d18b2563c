"""What the hot path reads: keys, limits and prices in memory, refreshed when the database changes.

A thread polls `storage.db.revision()` (one indexed read, bumped by triggers on every change
to keys, settings and prices) a few times a second and reloads only when it moved, so a key
revoked by the CLI or the admin is refused within a second and no request queries the database.
The same thread re-imports API_KEYS_FILE when its modification time changes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from addons.limits import Rule
from storage import db, keys, prices, settings

log = logging.getLogger("gateway.live")
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    enabled: bool
    expires_at: datetime | None
    rule: Rule  # the key's own limit, or the default per-key limit


@dataclass(frozen=True)
class Snapshot:
    keys_by_hash: dict[str, KeyEntry]
    ip_rule: Rule
    global_rule: Rule
    prices: dict[str, prices.PriceRow]
    revision: int


def load_snapshot(default_limits: settings.Limits) -> Snapshot:
    revision = db.revision()
    limits = settings.load_limits(default_limits)
    window = limits.rate_limit_window
    entries = {
        k.key_hash: KeyEntry(
            k.key_id, k.enabled, k.expires_at, Rule(k.rate_limit or limits.rate_limit_requests, window)
        )
        for k in keys.list_keys()
    }
    return Snapshot(
        entries,
        Rule(limits.ip_rate_limit_requests, limits.ip_rate_limit_window),
        Rule(limits.global_rate_limit_requests, limits.global_rate_limit_window),
        prices.all_prices(),
        revision,
    )


class LiveData:
    def __init__(self, default_limits: settings.Limits, keys_file: Path | None) -> None:
        self.default_limits = default_limits
        self.keys_file = keys_file
        self._keys_file_mtime: float | None = None
        self.snapshot = load_snapshot(default_limits)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-data", daemon=True)

    def start(self) -> None:
        self.import_keys_file()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def refresh(self) -> None:
        if db.revision() != self.snapshot.revision:
            # Swapping one reference is atomic: readers see the old or the new snapshot, whole.
            self.snapshot = load_snapshot(self.default_limits)

    def import_keys_file(self) -> None:
        if self.keys_file is None:
            return
        try:
            mtime = self.keys_file.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._keys_file_mtime:
            return
        self._keys_file_mtime = mtime
        try:
            result = keys.import_keys_file(self.keys_file)
        except keys.KeysFileError as e:
            # A warning, not an error: mitmproxy stops on errors logged during start-up.
            log.warning("API_KEYS_FILE not imported: %s", e)
            return
        log.info("API_KEYS_FILE imported: %s", result)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.import_keys_file()
                self.refresh()
            except Exception:  # keep serving the last good snapshot; say why once per failure
                log.exception("refreshing keys and settings failed")
