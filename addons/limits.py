"""Token buckets: requests (global, per key, per client IP) and tokens per minute (global, per
key), with OpenAI's rate-limit headers."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice

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

    __slots__ = ("rule", "tokens", "stamp")

    def __init__(self, rule: Rule, now: float) -> None:
        self.rule = rule
        self.tokens = float(rule.requests)
        self.stamp = now

    def tokens_at(self, now: float) -> float:
        """What the bucket would hold at `now`, without changing it."""
        return min(self.rule.requests, self.tokens + (now - self.stamp) * self.rule.rate)

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

    # A bucket of model tokens (rule: tokens per 60 s) is charged after the fact with what a
    # response used, which may take it below zero; requests are admitted while it is above zero.

    def admits(self, now: float) -> bool:
        self._refill(now)
        return self.tokens > 0

    def charge(self, now: float, amount: int) -> None:
        self._refill(now)
        self.tokens -= amount

    def until_positive(self) -> float:
        """Seconds until a bucket at or below zero is above it again."""
        return max(0.0, -self.tokens) / self.rule.rate


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


@dataclass(frozen=True)
class TokenVerdict:
    """The token limit that binds a request: the key's or the global one, whichever has less left."""

    allowed: bool
    scope: str  # "key" or "global"
    bucket: TokenBucket

    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """The three x-ratelimit-*-tokens headers as raw fields (cheaper to add than headers)."""
        bucket = self.bucket
        return (
            (b"x-ratelimit-limit-tokens", b"%d" % bucket.rule.requests),
            (b"x-ratelimit-remaining-tokens", b"%d" % max(0, math.floor(bucket.tokens))),
            (b"x-ratelimit-reset-tokens", format_duration(bucket.reset_after()).encode()),
        )

    def headers(self) -> dict[str, str]:
        headers = {name.decode(): value.decode() for name, value in self.fields()}
        if not self.allowed:
            wait = self.bucket.until_positive()
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return headers


def tokens_per_minute(tpm: int | None) -> Rule | None:
    return Rule(tpm, 60.0) if tpm else None


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
    """Buckets keyed by a name, at most MAX_TRACKED_BUCKETS per rule.

    A full bucket is the same as no bucket, so when room is needed the least recently used full
    one goes first: throttled clients stay throttled however many other addresses arrive. Only if
    none of the oldest EVICTION_SCAN is full does the fullest of them go.
    """

    # The oldest entries have been idle longest, so under any realistic rule they are full.
    EVICTION_SCAN = 16

    def __init__(self, capacity: int = MAX_TRACKED_BUCKETS) -> None:
        self.capacity = capacity
        # One table per rule: keys have rules of their own, and a rule changed live by the admin
        # starts with full buckets.
        self._buckets: dict[Rule, OrderedDict[str, TokenBucket]] = {}

    def get(self, name: str, rule: Rule, now: float) -> TokenBucket:
        table = self._buckets.setdefault(rule, OrderedDict())
        bucket = table.get(name)
        if bucket is not None:
            table.move_to_end(name)
            return bucket
        if len(table) >= self.capacity:
            self._make_room(table, now)
        bucket = table[name] = TokenBucket(rule, now)
        return bucket

    def _make_room(self, table: OrderedDict[str, TokenBucket], now: float) -> None:
        fullest, most = None, -1.0
        for name, bucket in islice(table.items(), self.EVICTION_SCAN):  # oldest first
            tokens = bucket.tokens_at(now)
            if tokens >= bucket.rule.requests:
                del table[name]
                return
            if tokens > most:
                fullest, most = name, tokens
        del table[fullest]

    def __len__(self) -> int:
        return sum(len(table) for table in self._buckets.values())


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

    def check_key(self, key_id: str, key_rule: Rule | None, global_rule: Rule, ip_verdict: Verdict
                  ) -> Verdict:
        """Take from the key's bucket (None: the key has none), then the global one; report the
        tightest that applied."""
        now = time.monotonic()
        key_bucket = self.key.get(key_id, key_rule, now) if key_rule else None
        if key_bucket is not None and not key_bucket.take(now):
            return Verdict(False, "key", key_bucket)
        if self._global is None or self._global[0] != global_rule:
            self._global = (global_rule, TokenBucket(global_rule, now))
        global_bucket = self._global[1]
        if not global_bucket.take(now):
            if key_bucket is not None:
                key_bucket.tokens += 1  # not spent: the request was refused
            return Verdict(False, "global", global_bucket)
        key_tokens = key_bucket.tokens if key_bucket is not None else math.inf
        if ip_verdict.bucket.tokens < min(key_tokens, global_bucket.tokens):
            return ip_verdict
        if global_bucket.tokens < key_tokens:
            return Verdict(True, "global", global_bucket)
        return Verdict(True, "key", key_bucket)


class TokenLimiter:
    """Tokens per minute, per key and in total: charged with each response's total tokens when
    it ends, checked when the next request comes. Event loop only, like Limiter."""

    def __init__(self) -> None:
        self.key = Buckets()
        self._global: tuple[Rule, TokenBucket] | None = None

    def _global_bucket(self, rule: Rule, now: float) -> TokenBucket:
        if self._global is None or self._global[0] != rule:
            self._global = (rule, TokenBucket(rule, now))  # a limit changed live starts full
        return self._global[1]

    def check(self, key_id: str, key_rule: Rule | None, global_rule: Rule | None) -> TokenVerdict | None:
        """The binding token limit (None: no token limit applies); not allowed if either bucket
        is at or below zero. Checking takes nothing: the response's tokens are charged later."""
        now = time.monotonic()
        verdict = None
        if key_rule is not None:
            bucket = self.key.get(key_id, key_rule, now)
            verdict = TokenVerdict(bucket.admits(now), "key", bucket)
            if not verdict.allowed:
                return verdict
        if global_rule is not None:
            bucket = self._global_bucket(global_rule, now)
            allowed = bucket.admits(now)
            if not allowed or verdict is None or bucket.tokens < verdict.bucket.tokens:
                verdict = TokenVerdict(allowed, "global", bucket)
        return verdict

    def charge(self, key_id: str, key_rule: Rule | None, global_rule: Rule | None, tokens: int) -> None:
        now = time.monotonic()
        if key_rule is not None:
            self.key.get(key_id, key_rule, now).charge(now, tokens)
        if global_rule is not None:
            self._global_bucket(global_rule, now).charge(now, tokens)
