"""Model allow-lists through the real gateway: refused before the upstream on every route that
names a model (transcription uploads included), and /v1/models showing only the key's models."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from openai import OpenAI

from storage import keys
from tests import procs
from tests.conftest import Gateway

UPSTREAM_MODELS = [
    "gpt-oss-120b",
    "openai/gpt-oss-120b",
    "gemma-3-27b",
    "qwen3-coder-30b-a3b",
    "qwen3-embedding-4b",
    "whisper-large-v3",
]
MESSAGES = [{"role": "user", "content": "hi"}]


def client(gateway: Gateway, plaintext: str, marker: str = "") -> OpenAI:
    # The marker travels in the query string, which the fake upstream records: it tells whether
    # a request reached the upstream at all.
    query = {"fake-marker": marker} if marker else None
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0, default_query=query)


def reached_upstream(gateway: Gateway, marker: str) -> list[dict]:
    return [q for q in gateway.upstream_requests() if f"fake-marker={marker}" in q["query"]]


def assert_not_allowed(error: openai.APIStatusError, model: str | None) -> None:
    assert (error.status_code, error.type, error.code) == (403, "invalid_request_error", "model_not_allowed")
    assert error.param == "model"
    if model:
        assert f"'{model}'" in error.body["message"]


@pytest.mark.parametrize("route", ["chat", "completions", "embeddings"])
def test_a_model_off_the_list_is_refused_before_the_upstream(gateway, route):
    _, plaintext = gateway.new_key(models=["gpt-oss-120b", "qwen3-embedding-4b"])
    marker = f"refused-{route}-{plaintext[-6:]}"
    with client(gateway, plaintext, marker) as api:
        calls = {
            "chat": lambda model: api.chat.completions.create(model=model, messages=MESSAGES),
            "completions": lambda model: api.completions.create(model=model, prompt="hi"),
            "embeddings": lambda model: api.embeddings.create(model=model, input="hi"),
        }
        with pytest.raises(openai.PermissionDeniedError) as refused:
            calls[route]("gemma-3-27b")
        assert_not_allowed(refused.value, "gemma-3-27b")
        with pytest.raises(openai.PermissionDeniedError):
            calls[route]("openai/gpt-oss-120b")  # names are exact: the vendor form is another name
        assert reached_upstream(gateway, marker) == []
        calls[route]("gpt-oss-120b" if route != "embeddings" else "qwen3-embedding-4b")
        assert len(reached_upstream(gateway, marker)) == 1


def test_a_request_without_a_model_is_refused_for_a_key_with_a_list(gateway):
    _, plaintext = gateway.new_key(models=["gpt-oss-120b"])
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {plaintext}"},
        json={"messages": MESSAGES},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert "names none" in r.json()["error"]["message"]
    _, unlisted = gateway.new_key()
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {unlisted}"},
        json={"messages": MESSAGES},
    )
    assert r.status_code == 200, "a key without a list: the upstream decides"


def test_anthropic_messages_are_checked_too(gateway):
    _, plaintext = gateway.new_key(models=["gpt-oss-120b"])
    with anthropic.Anthropic(base_url=gateway.url, api_key=plaintext, max_retries=0) as api:
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            api.messages.create(model="gemma-3-27b", max_tokens=20, messages=MESSAGES)
        assert "'gemma-3-27b' is not allowed" in str(refused.value)
        answer = api.messages.create(model="gpt-oss-120b", max_tokens=20, messages=MESSAGES)
    assert answer.usage.output_tokens == 15


def test_a_transcription_for_another_model_never_reaches_the_upstream(gateway, tmp_path):
    key_id, plaintext = gateway.new_key(models=["gpt-oss-120b"])
    marker = f"audio-{plaintext[-6:]}"
    audio = tmp_path / "clip.mp3"
    audio.write_bytes(b"\x00\x01" * 500_000)  # 1 MB: many reads, held until its model is known
    with audio.open("rb") as f, client(gateway, plaintext, marker) as api:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            api.audio.transcriptions.create(model="whisper-large-v3", file=f)
    assert_not_allowed(refused.value, "whisper-large-v3")

    # Without a declared size (chunked), and with no model at all: refused the same way.
    def upload(form: bytes):
        yield b"--b\r\n" + form
        for _ in range(16):
            yield b"\x00" * 65536
        yield b"\r\n--b--\r\n"

    headers = {"authorization": f"Bearer {plaintext}", "content-type": "multipart/form-data; boundary=b"}
    url = f"{gateway.url}/v1/audio/transcriptions?fake-marker={marker}"
    model_field = b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-large-v3\r\n--b\r\n'
    file_head = b'Content-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n'
    for form in (model_field + file_head, file_head):
        r = httpx.post(url, headers=headers, content=upload(form))
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text
    assert reached_upstream(gateway, marker) == []
    rows = gateway.usage_rows(key_id, count=3)
    assert [r.status for r in rows] == [403, 403, 403] and all(r.cost_eur == 0 for r in rows)


def test_a_transcription_for_a_listed_model_is_forwarded_whole(gateway, tmp_path):
    key_id, plaintext = gateway.new_key(models=["whisper-large-v3"])
    marker = f"audio-ok-{plaintext[-6:]}"
    audio = tmp_path / "clip.mp3"
    audio.write_bytes(b"\x00\x01" * 500_000)
    with audio.open("rb") as f, client(gateway, plaintext, marker) as api:
        result = api.audio.transcriptions.create(model="whisper-large-v3", file=f)
    assert result.text == "Hello, this is a test recording."
    [forwarded] = reached_upstream(gateway, marker)
    [row] = gateway.usage_rows(key_id)
    assert forwarded["body_complete"] and forwarded["body_length"] == row.request_bytes > 1_000_000
    assert row.model == "whisper-large-v3" and row.cost_eur > 0


def test_a_held_upload_is_bounded_by_max_body_mb(gateway):
    # The module's gateway takes 2 MB; a chunked upload is cut off there, not held further.
    _, plaintext = gateway.new_key(models=["whisper-large-v3"])

    def upload():
        yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-large-v3\r\n--b\r\n'
        for _ in range(48):
            yield b"\x00" * 65536

    r = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {plaintext}", "content-type": "multipart/form-data; boundary=b"},
        content=upload(),
    )
    assert r.status_code == 413


def test_the_model_list_shows_only_the_keys_models(gateway):
    _, listed = gateway.new_key(models=["gpt-oss-120b", "whisper-large-v3", "not-upstream"])
    with client(gateway, listed) as api:
        assert [m.id for m in api.models.list()] == ["gpt-oss-120b", "whisper-large-v3"]
    _, unlisted = gateway.new_key()
    with client(gateway, unlisted) as api:
        assert [m.id for m in api.models.list()] == UPSTREAM_MODELS


def test_one_model_is_picked_from_the_upstream_list(gateway):
    _, listed = gateway.new_key(models=["gpt-oss-120b"])
    with client(gateway, listed) as api:
        model = api.models.retrieve("gpt-oss-120b")
        assert (model.id, model.object) == ("gpt-oss-120b", "model")
        for missing in ("gemma-3-27b", "no-such-model"):
            with pytest.raises(openai.NotFoundError) as e:
                api.models.retrieve(missing)
            assert (e.value.code, e.value.param) == ("model_not_found", "model")
            assert f"'{missing}'" in e.value.body["message"]
    _, unlisted = gateway.new_key()
    with client(gateway, unlisted) as api:
        # The SDK sends it as /v1/models/openai%2Fgpt-oss-120b.
        assert api.models.retrieve("openai/gpt-oss-120b").id == "openai/gpt-oss-120b"
    r = httpx.delete(f"{gateway.url}/v1/models/gpt-oss-120b", headers={"authorization": f"Bearer {unlisted}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_list_changed_live_applies_at_once(gateway):
    key_id, plaintext = gateway.new_key(models=["gpt-oss-120b"])
    keys.update(key_id, models=["gemma-3-27b"])
    with client(gateway, plaintext) as api:

        def listed() -> list[str]:
            return [m.id for m in api.models.list()]

        procs.wait_until(lambda: listed() == ["gemma-3-27b"], timeout=10)
        api.chat.completions.create(model="gemma-3-27b", messages=MESSAGES)
        with pytest.raises(openai.PermissionDeniedError):
            api.chat.completions.create(model="gpt-oss-120b", messages=MESSAGES)
        keys.update(key_id, models=None)
        procs.wait_until(lambda: listed() == UPSTREAM_MODELS, timeout=10)
