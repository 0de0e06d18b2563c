"""What the hot path reads: keys, limits, spend settings and prices in memory, refreshed when the
database changes.

A thread polls `storage.db.revision()` (one indexed read, bumped by triggers on every change
to keys, settings and prices) a few times a second and reloads only when it moved, so a key
revoked by the CLI or the admin is refused within a second and no request queries the database.
The same thread follows API_KEYS_FILE (storage/keys_file.py) when its modification time changes;
a file that cannot be used is an error at start, and while running keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from addons.limits import Rule, tokens_per_minute
from storage import db, keys, keys_file, prices, settings, spend

log = logging.getLogger("gateway.live")
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    enabled: bool
    expires_at: datetime | None
    rule: Rule | None  # the key's own limit, the per-key default, or None: the global limit alone
    # Spend control (storage/keys.py); None: no such limit.
    budget_eur: float | None = None
    budget_period: str | None = None
    models: frozenset[str] | None = None  # the models the key may use; None: all
    tpm: Rule | None = None  # tokens per minute


@dataclass(frozen=True)
class Snapshot:
    keys_by_hash: dict[str, KeyEntry]
    ip_rule: Rule
    global_rule: Rule
    prices: dict[str, prices.PriceRow]
    revision: int
    spend: spend.GlobalSpend = spend.GlobalSpend()  # the gateway's own budget and token limit
    global_tpm: Rule | None = None


def load_snapshot(default_limits: settings.Limits) -> Snapshot:
    revision = db.revision()
    limits = settings.load_limits(default_limits)
    window = limits.key_rate_limit_window
    global_rule = Rule(limits.global_rate_limit_requests, limits.global_rate_limit_window)
    default_rule = Rule(limits.key_rate_limit_requests, window)
    # A per-key default equal to the global limit can never bind first: as in the original
    # proxy, such keys get no bucket of their own, and a refusal names the global limit.
    default_rule = None if default_rule == global_rule else default_rule
    entries = {
        k.key_hash: KeyEntry(
            k.key_id,
            k.enabled,
            k.expires_at,
            Rule(k.rate_limit, window) if k.rate_limit else default_rule,
            k.budget_eur,
            _budget_period(k) if k.budget_eur is not None else None,
            _models(k),
            tokens_per_minute(k.tpm),
        )
        for k in keys.list_keys()
    }
    global_spend = spend.load_global()
    return Snapshot(
        entries,
        Rule(limits.ip_rate_limit_requests, limits.ip_rate_limit_window),
        global_rule,
        prices.all_prices(),
        revision,
        global_spend,
        tokens_per_minute(global_spend.tpm),
    )


def _budget_period(key) -> str:
    if key.budget_period in spend.PERIODS:
        return key.budget_period
    # Only raw SQL can store another value; the rules' default stands in, as for a missing one.
    return "month"


def _models(key) -> frozenset[str] | None:
    try:
        return frozenset(keys.allowed_models(key)) or None
    except (ValueError, TypeError):
        # Written by hand and unreadable: fail closed, the key may use no model until it is fixed.
        log.error("key %s: its model list is not a JSON list of names; it may use no model", key.key_id)
        return frozenset()


class LiveData:
    def __init__(self, default_limits: settings.Limits, keys_path: Path | None, env_keys=()) -> None:
        self.default_limits = default_limits
        self.keys_file = keys_path
        self.env_keys = tuple(env_keys)
        self._keys_file_mtime: int | None = None
        self._look: asyncio.Future | None = None
        self._looks_started = self._looks_finished = 0
        self.snapshot = load_snapshot(default_limits)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-data", daemon=True)

    def load_keys_file(self) -> None:
        """The first reading, at start: a file that exists but cannot be used raises KeysFileError.
        A missing one is read when it appears, as the original auth proxy did."""
        if self.keys_file is None:
            return
        self._keys_file_mtime = self._mtime()
        if self._keys_file_mtime is None:
            log.info("API_KEYS_FILE: %s does not exist; it is read when it appears", self.keys_file)
            if not self.env_keys:
                return
        self._sync(self._keys_file_mtime is not None)
        self.refresh()

    def _sync(self, file_exists: bool) -> None:
        result = keys_file.sync(self.keys_file if file_exists else None, self.env_keys)
        for warning in result.warnings:
            log.warning("API_KEYS_FILE: %s", warning)
        log.info("API_KEYS_FILE applied: %s", result)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def refresh(self) -> None:
        if db.revision() != self.snapshot.revision:
            # Swapping one reference is atomic: readers see the old or the new snapshot, whole.
            self.snapshot = load_snapshot(self.default_limits)

    async def fresh_snapshot(self) -> Snapshot:
        """The snapshot after a look at the database that began after this call, made off the
        event loop. A key is refused only after such a look, so one created (or enabled) a moment
        ago works on its first request. Looks run one at a time and callers share them: a flood
        of bad keys costs one revision read at a time, behind the per-address limit."""
        needed = self._looks_started + 1
        while self._looks_finished < needed:
            if self._look is None or self._look.done():
                self._looks_started += 1
                self._look = asyncio.ensure_future(self._one_look(self._looks_started))
            await asyncio.shield(self._look)
        return self.snapshot

    async def _one_look(self, number: int) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.refresh)
        except Exception:  # the database is unreachable: decide on the last snapshot, still closed
            log.exception("looking for new keys failed; deciding on the keys already loaded")
        finally:
            self._looks_finished = number

    def _mtime(self) -> int | None:
        try:
            return self.keys_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def follow_keys_file(self) -> None:
        """Re-read the file if it changed; a bad edit changes nothing and is logged."""
        if self.keys_file is None:
            return
        mtime = self._mtime()
        if mtime == self._keys_file_mtime:
            return
        self._keys_file_mtime = mtime
        if mtime is None:
            # Removed, or being replaced: revoking every file key on a passing rename would be
            # worse than keeping them. Deleting a key is done by deleting its entry.
            log.error("API_KEYS_FILE: %s has gone; keeping the keys it gave until it is back", self.keys_file)
            return
        try:
            self._sync(file_exists=True)
        except keys_file.KeysFileError as e:
            log.error("API_KEYS_FILE not applied, the last good keys stay in force: %s", e)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.follow_keys_file()
                self.refresh()
            except Exception:  # keep serving the last good snapshot; say why once per failure
                log.exception("refreshing keys and settings failed")
