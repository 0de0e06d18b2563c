"""A budget set in the admin, in a real browser, enforced by the real gateway: the key is refused
once it has spent its budget, the usage tab counts the refusals apart from upstream errors, and
raising the budget lets the key work again. Then its model list: another model is refused."""

from __future__ import annotations

import time

import openai
from playwright.sync_api import expect

from tests.browser.test_admin_browser import shoot, wait_for_text
from tests.browser.test_admin_spend_browser import ask, log_in, watch_console

BUDGET = "0.0002"  # euros: one call of the fake upstream's answer costs €0.000145, two go over


def until(attempt, timeout: float = 10.0, interval: float = 0.2):
    """Call `attempt` until it returns something truthy: the gateway sees spend and settings
    within a second or two (usage is written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result:
            return result
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(interval)


def test_a_spent_budget_refuses_the_key_until_it_is_raised(page, stack):
    problems = watch_console(page)
    admin = f"{stack.url}/admin"
    log_in(page, admin)

    page.fill("#name", "budgeted")
    page.fill("#budget", BUDGET)
    page.select_option("#budget_period", "day")
    page.click("#create-key button[type=submit]")
    key = page.input_value("#new-key")
    assert "€0.0002 per day" in page.inner_text(".details")

    # It works until its spend reaches the budget, then it is refused with insufficient_quota.
    assert ask(stack.url, key)
    calls = {"ok": 1}

    def refused():
        try:
            ask(stack.url, key)
        except openai.RateLimitError as exc:
            return exc
        calls["ok"] += 1
        return None

    refusal = until(refused)
    assert refusal.status_code == 429 and refusal.code == "insufficient_quota"
    assert calls["ok"] >= 2, "refused only once the budget was spent"

    # The keys table shows it spent; the usage tab counts the refusal apart from upstream errors.
    wait_for_text(page, f"{admin}/keys", "#keys-table", "this day spent")
    row = page.locator("tr", has_text="budgeted")
    expect(row.locator("svg.meter-over")).to_have_count(1)
    shoot(page, "spend-7-budget-spent")
    page.goto(f"{admin}/usage?period=today")
    [choice] = [o for o in page.locator("#key option").all_inner_texts() if o.startswith("budgeted")]
    page.select_option("#key", label=choice)
    page.click("#key-filter button[type=submit]")
    expect(page.locator("#key-filter-note")).to_contain_text("budgeted")
    wait_for_text(page, page.url, "#total-refused", "1", timeout=10)
    # One refused call, metered with its 429, and no upstream error.
    assert (page.inner_text("#total-refused"), page.inner_text("#total-errors")) == ("1", "0")
    assert page.inner_text("#total-requests") == str(calls["ok"] + 1)
    shoot(page, "spend-8-refusals-on-the-usage-tab")

    # Raise the budget on the key's page: the key works again.
    page.goto(f"{admin}/keys")
    page.locator("tr", has_text="budgeted").locator("a.strong").click()
    page.fill("#budget", "1")
    page.click("#edit-key button[type=submit]")
    assert "budget €1.00 per day" in page.inner_text(".flashes")

    def works():
        try:
            return ask(stack.url, key)
        except openai.RateLimitError:
            return None

    assert until(works)

    # Its model list: only gemma-3-27b. Another model is refused, that one works.
    page.check("#edit-key input[name=models][value='gemma-3-27b']")
    page.click("#edit-key button[type=submit]")
    expect(page.locator(".flash-success")).to_contain_text("models gemma-3-27b")

    def model_refused():
        try:
            ask(stack.url, key)
        except openai.PermissionDeniedError as exc:
            return exc
        return None

    refusal = until(model_refused)
    assert refusal.status_code == 403 and refusal.code == "model_not_allowed"
    assert ask(stack.url, key, model="gemma-3-27b")
    assert problems == [], "console errors (for example CSP violations)"
