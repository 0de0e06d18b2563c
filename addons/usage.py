"""Usage figures (tokens, audio seconds) and the model read from upstream response objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Larger counts are treated as garbage: they would not fit a JSON-safe integer or an SQLite column.
MAX_COUNT = 2**53
MAX_MODEL_LENGTH = 256

# Raw usage keys read as token counts. OpenAI: prompt_tokens includes cached tokens. Anthropic:
# input_tokens excludes the cache reads and cache writes, which are reported beside it.
_TOKEN_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
# Blocks whose `cached_tokens` is a part of the prompt (chat completions; the Responses API shape).
_DETAIL_KEYS = ("prompt_tokens_details", "input_tokens_details")


@dataclass(frozen=True)
class Usage:
    """What one response consumed. Never any content."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    audio_seconds: float = 0.0


def _count(value: Any) -> int | None:
    """A token count, or None for anything that is not a non-negative whole number (bools included)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_COUNT else None
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_COUNT:
        return int(value)
    return None


def _seconds(value: Any) -> float | None:
    """Audio seconds, or None for anything but a finite non-negative number (bools included)."""
    if type(value) in (int, float) and 0 <= value <= MAX_COUNT:  # false for nan and inf too
        return float(value)
    return None


def _usage_block(obj: Any) -> dict | None:
    """The `usage` object of a response, chunk or event; Anthropic's message_start nests it in `message`."""
    if not isinstance(obj, dict):
        return None
    block = obj.get("usage")
    if isinstance(block, dict):
        return block
    message = obj.get("message")
    if isinstance(message, dict):
        block = message.get("usage")
        if isinstance(block, dict):
            return block
    return None


def raw_usage(obj: Any) -> dict[str, int | float]:
    """The valid usage fields present in `obj`, under their upstream names; empty when there are none.

    `cached_tokens` stands for a `*_tokens_details.cached_tokens`, `seconds` for transcription audio.
    """
    block = _usage_block(obj)
    if block is None:
        return {}
    raw: dict[str, int | float] = {}
    for key in _TOKEN_KEYS:
        value = _count(block.get(key))
        if value is not None:
            raw[key] = value
    for key in _DETAIL_KEYS:
        details = block.get(key)
        if isinstance(details, dict):
            value = _count(details.get("cached_tokens"))
            if value is not None:
                raw["cached_tokens"] = value
                break
    seconds = _seconds(block.get("seconds"))
    if seconds is not None:
        raw["seconds"] = seconds
    return raw


def usage_from_raw(raw: dict[str, int | float]) -> Usage | None:
    """Turn the fields of `raw_usage` into a Usage; None when there are none.

    OpenAI names win when both are present. For Anthropic's names, prompt_tokens is
    input_tokens + cache_read_input_tokens + cache_creation_input_tokens (the three are disjoint
    there) and cached_tokens is cache_read_input_tokens. total_tokens, when the upstream does not
    give it, is prompt_tokens + completion_tokens.
    """
    if not raw:
        return None
    if "prompt_tokens" in raw:
        prompt = int(raw["prompt_tokens"])
    else:
        prompt = int(
            raw.get("input_tokens", 0)
            + raw.get("cache_read_input_tokens", 0)
            + raw.get("cache_creation_input_tokens", 0)
        )
    completion = int(raw.get("completion_tokens", raw.get("output_tokens", 0)))
    cached = int(raw.get("cached_tokens", raw.get("cache_read_input_tokens", 0)))
    total = int(raw.get("total_tokens", prompt + completion))
    return Usage(prompt, completion, cached, total, float(raw.get("seconds", 0.0)))


def usage_from_object(obj: Any) -> Usage | None:
    """The usage of a parsed response body, stream chunk or Anthropic event; None if it has none."""
    return usage_from_raw(raw_usage(obj))


def model_from_object(obj: Any) -> str | None:
    """`model` of a body or chunk (or of Anthropic's message_start `message`); None if absent or odd."""
    if not isinstance(obj, dict):
        return None
    model = obj.get("model")
    if model is None and isinstance(obj.get("message"), dict):
        model = obj["message"].get("model")
    if isinstance(model, str) and 0 < len(model) <= MAX_MODEL_LENGTH:
        return model
    return None


def json_object(body: bytes | None) -> dict | None:
    """`body` parsed as a JSON object; None for no body, bad JSON or any other JSON value."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def usage_from_json_body(body: bytes | None) -> Usage | None:
    return usage_from_object(json_object(body))


def model_from_json_body(body: bytes | None) -> str | None:
    return model_from_object(json_object(body))


class UsageAccumulator:
    """Usage over the events of one stream.

    Upstreams report usage cumulatively (privatemode in every chunk; Anthropic input in
    message_start, output in each message_delta), so the last value of each field wins:
    adding them up would count the same tokens many times.
    """

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: dict[str, int | float] = {}

    def add(self, obj: Any) -> bool:
        """Take the usage fields of one parsed event; True if it had any."""
        raw = raw_usage(obj)
        self._raw.update(raw)
        return bool(raw)

    @property
    def usage(self) -> Usage | None:
        return usage_from_raw(self._raw)


LARGE_BODY_BYTES = 256 * 1024
_DECODER = json.JSONDecoder()


def usage_from_large_body(body: bytes) -> Usage | None:
    """The top-level `usage` of a body too large to parse whole on the event loop (a big
    embeddings answer takes tens of milliseconds): servers put it after the data, so only the
    object after the last `"usage"` is read. None when it is not found that way."""
    at = body.rfind(b'"usage"')
    start = body.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        obj, _ = _DECODER.raw_decode(body[start : start + 4096].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage_from_object({"usage": obj})
