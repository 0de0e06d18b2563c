"""The addon's hooks in-process (mitmproxy's taddons and tflow): failing closed, routing."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy.test import taddons, tflow

from addons import routes
from addons.gateway import Gateway
from storage import config, keys


class Broken:
    """Stands in for one part of the admission path and fails the way a bug would."""

    def __getattr__(self, name):
        raise RuntimeError("boom: a bug in admission")


@pytest.fixture
def gateway_addon(tmp_path):
    settings = config.load({"DATA_DIR": str(tmp_path), "API_KEYS_FILE": str(tmp_path / "none.json")})

    async def loaded():
        addon = Gateway(settings)
        with taddons.context(addon):
            yield addon

    # taddons needs a running loop; drive the async generator by hand.
    loop = asyncio.new_event_loop()
    generator = loaded()
    addon = loop.run_until_complete(generator.__anext__())
    yield addon, loop
    addon.done()
    loop.run_until_complete(generator.aclose())
    loop.close()


def api_flow(plaintext: str | None, path: str = "/v1/chat/completions"):
    flow = tflow.tflow()
    flow.request.path = path
    flow.request.method = "POST"
    flow.request.content = json.dumps({"model": "gpt-oss-120b", "messages": []}).encode()
    if plaintext:
        flow.request.headers["authorization"] = f"Bearer {plaintext}"
    return flow


@pytest.mark.parametrize("part", ["limiter", "live"])
def test_an_exception_in_admission_refuses_the_request(gateway_addon, monkeypatch, part):
    addon, _ = gateway_addon
    _, plaintext = keys.create_key("t")
    addon.live.refresh()
    flow = api_flow(plaintext)
    monkeypatch.setattr(addon, part, Broken())
    addon.requestheaders(flow)
    addon.request(flow)
    assert flow.response.status_code == 500
    assert json.loads(flow.response.content)["error"]["code"] == "internal_error"


def test_a_request_that_skipped_admission_is_never_forwarded(gateway_addon):
    addon, _ = gateway_addon
    flow = api_flow("pmg_anything")
    addon.request(flow)  # requestheaders never ran, as if a hook had been skipped
    assert flow.response.status_code == 500


def test_an_admitted_request_is_forwarded_without_its_key(gateway_addon):
    addon, loop = gateway_addon
    _, plaintext = keys.create_key("t")
    addon.live.refresh()
    flow = api_flow(plaintext)

    async def hooks():  # the upstream timer needs the running loop
        addon.requestheaders(flow)
        addon.request(flow)

    loop.run_until_complete(hooks())
    assert flow.response is None
    assert "authorization" not in flow.request.headers


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", routes.Kind.API),
        ("/v1/audio/transcriptions", routes.Kind.API),
        ("/unstructured/general/v0/general", routes.Kind.API),
        ("/health", routes.Kind.HEALTH),
        ("/admin", routes.Kind.ADMIN),
        ("/admin/keys", routes.Kind.ADMIN),
        ("/administrator", routes.Kind.UNKNOWN),
        ("/v1/chat/completions/", routes.Kind.UNKNOWN),
        ("/admin/../v1/models", routes.Kind.UNKNOWN),
        ("/v1/%2e%2e/admin", routes.Kind.UNKNOWN),
        ("/unstructured/..\\admin", routes.Kind.UNKNOWN),
        ("/unstructured/%252e%252e/admin", routes.Kind.UNKNOWN),
        ("/unstructured/general/v0/%2541", routes.Kind.UNKNOWN),
        ("/unstructured/general/v0/general%20x", routes.Kind.API),
        ("/", routes.Kind.UNKNOWN),
    ],
)
def test_routes(path, kind):
    assert routes.classify(path).kind is kind


def test_settings_name_the_bad_variable():
    with pytest.raises(config.ConfigError, match="^UPSTREAM_URL:"):
        config.load({"UPSTREAM_URL": "ftp://x"})
    with pytest.raises(config.ConfigError, match="^TLS_KEY_FILE:"):
        config.load({"TLS_CERT_FILE": __file__})
    with pytest.raises(config.ConfigError, match="^LISTEN_PORT:"):
        config.load({"LISTEN_PORT": "70000"})
    with pytest.raises(config.ConfigError, match="^FORCE_HTTPS:"):
        config.load({"FORCE_HTTPS": "maybe"})
