"""Token buckets in isolation: refill, exactness, headers and bounded memory."""

from __future__ import annotations

import pytest

from addons.limits import (
    MAX_TRACKED_BUCKETS,
    Buckets,
    Limiter,
    Rule,
    TokenBucket,
    TokenLimiter,
    TokenVerdict,
    format_duration,
    tokens_per_minute,
)


def test_bucket_refills_over_its_window():
    bucket = TokenBucket(Rule(10, 60), now=0.0)
    assert all(bucket.take(0.0) for _ in range(10))
    assert not bucket.take(0.0)
    assert bucket.retry_after() == pytest.approx(6.0)
    assert bucket.take(6.0)
    assert not bucket.take(6.0)
    bucket.take(1000.0)
    assert bucket.tokens == pytest.approx(9.0), "never more than the bucket holds"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (0.0, "0ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_durations_read_like_openai(seconds, text):
    assert format_duration(seconds) == text


def test_key_limit_is_checked_before_the_global_one_and_refunds():
    limiter = Limiter()
    ip = limiter.check_ip("1.2.3.4", Rule(100, 60))
    key_rule, global_rule = Rule(2, 60), Rule(3, 60)
    assert limiter.check_key("a", key_rule, global_rule, ip).allowed
    assert limiter.check_key("a", key_rule, global_rule, ip).allowed
    refused = limiter.check_key("a", key_rule, global_rule, ip)
    assert (refused.allowed, refused.scope) == (False, "key")
    assert limiter.check_key("b", key_rule, global_rule, ip).allowed
    refused = limiter.check_key("c", key_rule, global_rule, ip)
    assert (refused.allowed, refused.scope) == (False, "global")
    assert limiter.key.get("c", key_rule, 0).tokens == 2, (
        "a request the global limit refused costs the key nothing"
    )


def test_headers_name_the_tightest_bucket():
    limiter = Limiter()
    ip = limiter.check_ip("1.2.3.4", Rule(100, 60))
    verdict = limiter.check_key("a", Rule(5, 60), Rule(1000, 60), ip)
    assert verdict.scope == "key"
    assert verdict.headers()["x-ratelimit-limit-requests"] == "5"
    assert verdict.headers()["x-ratelimit-remaining-requests"] == "4"
    assert "retry-after" not in verdict.headers()


def test_refusal_carries_retry_after():
    limiter = Limiter()
    rule = Rule(1, 30)
    limiter.check_ip("1.2.3.4", rule)
    refused = limiter.check_ip("1.2.3.4", rule)
    assert not refused.allowed
    assert refused.headers()["retry-after"] == "30"
    assert int(refused.headers()["retry-after-ms"]) > 29_000


def test_distinct_addresses_keep_memory_bounded():
    buckets, rule = Buckets(), Rule(10, 60)
    for i in range(3 * MAX_TRACKED_BUCKETS):
        buckets.get(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}-{i}", rule, 0.0).take(0.0)
    assert len(buckets) <= MAX_TRACKED_BUCKETS


def test_a_flood_of_new_addresses_never_frees_a_throttled_one():
    # Evicting a throttled client's bucket would hand it a full one: the flood is the bypass.
    buckets, rule = Buckets(capacity=1000), Rule(100, 60)
    victim = buckets.get("victim", rule, 0.0)
    while victim.take(0.0):
        pass
    for i in range(20_000):  # 20 times the room, within half a second
        now = i / 40_000
        buckets.get(f"flood-{i}", rule, now).take(now)
    assert len(buckets) <= 1000
    assert buckets.get("victim", rule, 0.5) is victim and not victim.take(0.5), "still throttled"


def test_full_buckets_go_first_then_the_fullest():
    buckets, rule = Buckets(capacity=3), Rule(10, 10)  # one token a second
    for name in ("a", "b", "c"):
        bucket = buckets.get(name, rule, 0.0)
        for _ in range(10):
            bucket.take(0.0)
    buckets.get("b", rule, 0.0).tokens = 9.5  # b has refilled most
    buckets.get("d", rule, 0.1)  # no full one: the fullest of the oldest goes
    assert set(buckets._buckets[rule]) == {"a", "c", "d"}
    buckets.get("e", rule, 0.2)  # d is full (new): it goes, the throttled stay
    assert set(buckets._buckets[rule]) == {"a", "c", "e"}


def test_a_key_without_a_bucket_is_bounded_by_the_global_limit_alone():
    limiter = Limiter()
    ip = limiter.check_ip("1.2.3.4", Rule(100, 60))
    assert limiter.check_key("a", None, Rule(2, 60), ip).scope == "global"
    assert limiter.check_key("a", None, Rule(2, 60), ip).allowed
    refused = limiter.check_key("a", None, Rule(2, 60), ip)
    assert (refused.allowed, refused.scope) == (False, "global")
    assert len(limiter.key) == 0


def test_a_token_bucket_is_charged_after_the_fact_and_admits_while_above_zero():
    limiter, rule = TokenLimiter(), tokens_per_minute(50)
    assert limiter.check("a", rule, None).allowed
    limiter.charge("a", rule, None, 29)  # 21 left
    assert limiter.check("a", rule, None).allowed, "above zero: admitted, however large the next answer"
    limiter.charge("a", rule, None, 29)  # 8 below zero, and 50 a minute come back
    refused = limiter.check("a", rule, None)
    assert (refused.allowed, refused.scope) == (False, "key")
    assert refused.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert limiter.check("b", rule, None).allowed, "other keys have buckets of their own"


def test_token_headers_read_like_openai():
    bucket = TokenBucket(tokens_per_minute(50), now=0.0)
    bucket.charge(0.0, 58)  # 8 below zero: 9.6 s until it is above zero, 69.6 s until full
    headers = TokenVerdict(False, "key", bucket).headers()
    assert headers == {
        "x-ratelimit-limit-tokens": "50",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m10s",
        "retry-after": "10",
        "retry-after-ms": "9600",
    }
    bucket.charge(30.0, -30)  # 30 s later 17 (25 came back), then a refund for the test: 47
    assert TokenVerdict(True, "key", bucket).headers() == {
        "x-ratelimit-limit-tokens": "50",
        "x-ratelimit-remaining-tokens": "47",
        "x-ratelimit-reset-tokens": "4s",
    }


def test_the_binding_token_limit_is_the_tighter_of_the_key_and_global_buckets():
    limiter, key_rule, global_rule = TokenLimiter(), tokens_per_minute(1000), tokens_per_minute(100)
    assert limiter.check("a", None, None) is None, "no token limit: no verdict, no headers"
    verdict = limiter.check("a", key_rule, global_rule)
    assert (verdict.scope, verdict.headers()["x-ratelimit-limit-tokens"]) == ("global", "100")
    limiter.charge("a", key_rule, global_rule, 150)
    refused = limiter.check("b", None, global_rule)
    assert (refused.allowed, refused.scope) == (False, "global"), "the global bucket covers every key"
    assert limiter.check("a", key_rule, None).scope == "key"


def test_a_bucket_refills_to_its_limit_from_below_zero():
    bucket = TokenBucket(tokens_per_minute(60), now=0.0)
    bucket.charge(0.0, 90)
    assert bucket.tokens == -30 and bucket.until_positive() == pytest.approx(30.0)
    assert not bucket.admits(29.0)
    assert bucket.admits(31.0)
    assert bucket.reset_after() == pytest.approx(59.0)
