"""The real processes for browser tests: fake upstream, gateway and admin, sharing one database."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import procs

ADMIN_PASSWORD = "browser-test-password-1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
SCREENSHOTS = procs.ROOT / "test-output" / "screenshots"


@dataclass
class Stack:
    gateway: procs.Proc
    admin: procs.Proc
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="module")
def stack(upstream, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("browser-stack")
    # What privatemode-proxy logs after attesting Privatemode; the fake upstream does not write it.
    (data_dir / "privatemode-proxy.log").write_text(
        'time=2026-01-01T00:00:00.000Z level=INFO msg="Validate succeeded" validator.name=snp-0-GENOA\n')
    admin_port = procs.free_port()
    wide = {"RATE_LIMIT_REQUESTS": "100000", "IP_RATE_LIMIT_REQUESTS": "100000",
            "GLOBAL_RATE_LIMIT_REQUESTS": "100000"}
    gateway = procs.start_gateway(data_dir, upstream.port, admin_port=admin_port, **wide)
    env = procs.gateway_env(data_dir, upstream.port, gateway.port, admin_port,
                            ADMIN_PASSWORD=ADMIN_PASSWORD, **wide)
    admin = procs.Proc("admin", [sys.executable, "-m", "admin"], env, data_dir / "admin.log", admin_port)
    try:
        admin.start().wait_port()
    except BaseException:
        gateway.stop()
        raise
    yield Stack(gateway, admin, data_dir)
    admin_code, gateway_code = admin.stop(), gateway.stop()
    assert admin_code == 0, admin.log()
    assert gateway_code == 0, gateway.log()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh --browser does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
