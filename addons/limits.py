"""Token buckets: global, per key and per client IP, with OpenAI's rate-limit headers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from cachetools import TTLCache

# Bounded memory whatever the number of distinct clients; an evicted bucket starts full again.
MAX_TRACKED_BUCKETS = 100_000


@dataclass(frozen=True)
class Rule:
    requests: int
    window: float

    @property
    def rate(self) -> float:
        return self.requests / self.window


class TokenBucket:
    """`rule.requests` tokens, refilled continuously over `rule.window` seconds."""

    __slots__ = ("rule", "tokens", "stamp", "kept")

    def __init__(self, rule: Rule, now: float) -> None:
        self.rule = rule
        self.tokens = float(rule.requests)
        self.stamp = now
        self.kept = now  # when its cache entry's time to live last started

    def _refill(self, now: float) -> None:
        self.tokens = min(self.rule.requests, self.tokens + (now - self.stamp) * self.rule.rate)
        self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1 - self.tokens) / self.rule.rate)

    def reset_after(self) -> float:
        return (self.rule.requests - self.tokens) / self.rule.rate


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    scope: str  # the tightest bucket: "global", "key" or "ip"
    bucket: TokenBucket

    def headers(self) -> dict[str, str]:
        headers = {
            "x-ratelimit-limit-requests": str(self.bucket.rule.requests),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(self.bucket.tokens))),
            "x-ratelimit-reset-requests": format_duration(self.bucket.reset_after()),
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.bucket.retry_after())))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.bucket.retry_after() * 1000)))
        return headers


def format_duration(seconds: float) -> str:
    """OpenAI's style: `250ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Buckets:
    """Buckets keyed by a name, each kept only while it could still be below full."""

    def __init__(self) -> None:
        self._buckets: dict[Rule, TTLCache] = {}

    def get(self, name: str, rule: Rule, now: float) -> TokenBucket:
        cache = self._buckets.get(rule)
        if cache is None:
            # One cache per rule: keys have rules of their own, and a rule changed live by the
            # admin starts with full buckets. Caches of rules no longer used empty out by TTL.
            # Entries live two windows and are renewed once a window: an entry is only dropped
            # a full window after its last use, when its bucket is full again anyway.
            cache = self._buckets[rule] = TTLCache(
                MAX_TRACKED_BUCKETS, ttl=2 * rule.window, timer=time.monotonic
            )
        bucket = cache.get(name)
        if bucket is None:
            bucket = cache[name] = TokenBucket(rule, now)
        elif now - bucket.kept > rule.window:
            cache[name] = bucket
            bucket.kept = now
        return bucket

    def __len__(self) -> int:
        return sum(len(cache) for cache in self._buckets.values())


class Limiter:
    """Applies the rules; all calls come from mitmproxy's event loop thread, so check-and-take is atomic."""

    def __init__(self) -> None:
        self.ip = Buckets()
        self.key = Buckets()
        self._global: tuple[Rule, TokenBucket] | None = None

    def check_ip(self, ip: str, rule: Rule) -> Verdict:
        now = time.monotonic()
        bucket = self.ip.get(ip, rule, now)
        return Verdict(bucket.take(now), "ip", bucket)

    def check_key(self, key_id: str, key_rule: Rule, global_rule: Rule, ip_verdict: Verdict) -> Verdict:
        """Take from the key's bucket, then the global one; report the tightest that applied."""
        now = time.monotonic()
        key_bucket = self.key.get(key_id, key_rule, now)
        if not key_bucket.take(now):
            return Verdict(False, "key", key_bucket)
        if self._global is None or self._global[0] != global_rule:
            self._global = (global_rule, TokenBucket(global_rule, now))
        global_bucket = self._global[1]
        if not global_bucket.take(now):
            key_bucket.tokens += 1  # not spent: the request was refused
            return Verdict(False, "global", global_bucket)
        if ip_verdict.bucket.tokens < min(key_bucket.tokens, global_bucket.tokens):
            return ip_verdict
        if global_bucket.tokens < key_bucket.tokens:
            return Verdict(True, "global", global_bucket)
        return Verdict(True, "key", key_bucket)
