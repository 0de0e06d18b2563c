"""Budgets and token limits: admit on what was spent so far, charge when a response ends.

A request is admitted while its key's spend in the key's budget period is below the key's budget,
the spend of all keys below the global budget (Settings), and the key's and the global token
buckets are above zero; everything comes from memory (addons/live.py, addons/spend.py,
addons/limits.py), so admission costs a few dictionary lookups and no database query.

The moment a request ends (a response, a stream that ends or is cut, an error), `charge` reads
its usage (a JSON answer's body is read now, not later by the writer), prices it with the
writer's own function (addons/metering.make_record, the price snapshot's table), and adds the
cost to the spend counters and the total tokens to the token buckets; this happens in mitmproxy's
response or error hook, before the client sees the end of the answer. So sequential requests stop
exactly at the budget: with cost c per request, a budget B lets ceil(B/c) requests through, the
last one crossing it. Requests already running when the budget is crossed are not stopped: with
N requests in flight, spend can exceed the budget by at most N requests' cost (the one that
crosses it and the N - 1 beside it). Token limits behave the same way.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons import errors
from addons.limits import TokenLimiter
from addons.live import KeyEntry, Snapshot
from addons.metering import Finished, make_record
from addons.spend import SpendCounters
from storage import spend

log = logging.getLogger("gateway.quota")
KEY = "gateway.key"  # flow.metadata: the KeyEntry the request was admitted with
# A sum of float costs can land a hair under the budget it meets (0.037 three times is
# 0.11099999999999999, not 0.111): spend within a billionth of the budget has reached it.
REACHED = 1 - 1e-9
ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}
_RATE_LIMIT_HEADER = b"x-ratelimit-"


class Quota:
    """Event loop only: checks and charges need no lock."""

    def __init__(self) -> None:
        self.spend = SpendCounters()
        self.tokens = TokenLimiter()

    def load(self) -> None:
        """The spend of the current periods, from the database; called once, at start."""
        self.spend.load(time.time())

    def admit(self, flow: http.HTTPFlow, entry: KeyEntry, snapshot: Snapshot) -> http.Response | None:
        """The refusal for a key whose budget, the global budget, or a token limit is used up."""
        flow.metadata[KEY] = entry
        now = time.time()
        if entry.budget_eur is not None:
            spent = self.spend.of_key(entry.key_id, entry.budget_period, now)
            if spent >= entry.budget_eur * REACHED:
                period = self.spend.period(entry.budget_period, now)
                return errors.insufficient_quota(_used_up("This API key's", entry.budget_eur, spent, period))
        budget = snapshot.spend
        if budget.budget_eur is not None:
            spent = self.spend.total(budget.budget_period, now)
            if spent >= budget.budget_eur * REACHED:
                period = self.spend.period(budget.budget_period, now)
                return errors.insufficient_quota(_used_up("The gateway's", budget.budget_eur, spent, period))
        if entry.tpm is None and snapshot.global_tpm is None:
            return None
        verdict = self.tokens.check(entry.key_id, entry.tpm, snapshot.global_tpm)
        if verdict.allowed:
            return None
        headers = verdict.headers()
        scope = "per-key" if verdict.scope == "key" else "global"
        return errors.tokens_exceeded(
            f"Rate limit exceeded ({scope} token limit: {verdict.bucket.rule.requests} tokens per minute). "
            f"Retry after {headers['retry-after']} s.",
            headers,
        )

    def add_token_headers(self, flow: http.HTTPFlow, snapshot: Snapshot) -> None:
        """OpenAI's x-ratelimit-*-tokens on every answer to a key a token limit applies to, in place
        of any the upstream sent: they describe the client's own limit."""
        entry: KeyEntry | None = flow.metadata.get(KEY)
        if entry is None or (entry.tpm is None and snapshot.global_tpm is None):
            return
        ours = self.tokens.check(entry.key_id, entry.tpm, snapshot.global_tpm).fields()
        # Raw fields, as for the request headers: this runs on every answer to such a key.
        fields = flow.response.headers.fields
        if any(name[:12].lower() == _RATE_LIMIT_HEADER for name, _ in fields):
            fields = tuple(f for f in fields if not (f[0][:12].lower() == _RATE_LIMIT_HEADER
                                                     and f[0].lower().endswith(b"-tokens")))
        flow.response.headers.fields = fields + ours

    def charge(self, done: Finished, entry: KeyEntry | None, snapshot: Snapshot) -> Finished:
        """Count a metered request's cost and tokens now; returns it with its body's usage read,
        so that the writer does not read it again."""
        try:
            if done.body:
                done = done.with_body_read()
            # The very function the writer prices the usage row with: counters and rows agree.
            self.spend.add(done.key_id, make_record(done, snapshot.prices).cost_eur, done.ts)
            key_tpm = entry.tpm if entry is not None else None
            if done.usage is not None and done.usage.total_tokens and (key_tpm or snapshot.global_tpm):
                self.tokens.charge(done.key_id, key_tpm, snapshot.global_tpm, done.usage.total_tokens)
        except Exception:  # a bug here must not cost the request its usage row: the writer still gets it
            log.exception("counting a request's spend and tokens failed")
        return done


def _used_up(whose: str, budget: float, spent: float, period: spend.Period) -> str:
    return (
        f"{whose} {ADJECTIVE[period.name]} budget of {_eur(budget)} EUR is used up ({_eur(spent)} EUR "
        f"spent since {period.start:%Y-%m-%d} 00:00 UTC). It resets at {period.end:%Y-%m-%d %H:%M} UTC."
    )


def _eur(amount: float) -> str:
    # Cents for real budgets; small test budgets keep their significant digits.
    return f"{amount:.2f}" if amount >= 1 else f"{amount:.6g}"
