"""Usage read from every upstream response shape, and from whatever else an upstream might send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addons.sse import SseUsageTap
from addons.usage import (
    LARGE_BODY_BYTES,
    MAX_COUNT,
    Usage,
    UsageAccumulator,
    json_object,
    model_from_json_body,
    model_from_object,
    usage_from_json_body,
    usage_from_large_body,
    usage_from_object,
)

SAMPLES = Path(__file__).resolve().parent / "samples"

# The figures of samples/README.md.
EXPECTED = {
    "chat.json": Usage(21, 8, 0, 29),
    "chat_stream_privatemode.sse": Usage(21, 8, 16, 29),
    "chat_stream_include_usage.sse": Usage(21, 8, 0, 29),
    "chat_stream_no_usage.sse": None,
    "embeddings.json": Usage(prompt_tokens=13, total_tokens=13),
    "transcription.json": Usage(audio_seconds=35.0),
    "models.json": None,
    "messages.json": Usage(25, 15, 0, 40),
    "messages_stream.sse": Usage(25, 15, 0, 40),
    "upstream_error.json": None,
    "upstream_error_stream.sse": None,
}


def test_every_sample_has_a_figure():
    names = {p.name for p in SAMPLES.iterdir() if p.suffix in (".json", ".sse")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.endswith(".json")))
def test_json_sample(name):
    assert usage_from_json_body((SAMPLES / name).read_bytes()) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.endswith(".sse")))
def test_stream_sample(name):
    tap = SseUsageTap()
    body = (SAMPLES / name).read_bytes()
    assert tap(body) == body
    assert tap(b"") == b""
    assert tap.usage == EXPECTED[name]
    assert tap.error == name.startswith("upstream_error")


def test_privatemode_stream_is_the_last_usage_not_the_sum():
    tap = SseUsageTap()
    tap((SAMPLES / "chat_stream_privatemode.sse").read_bytes())
    assert tap.usage.completion_tokens == 8  # a sum of the chunks would give 44
    assert tap.usage.prompt_tokens == 21


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("chat.json", "gpt-oss-120b"),
        ("embeddings.json", "qwen3-embedding-4b"),
        ("messages.json", "gpt-oss-120b"),
        ("transcription.json", None),
        ("models.json", None),
        ("upstream_error.json", None),
    ],
)
def test_model_of_json_sample(name, model):
    assert model_from_json_body((SAMPLES / name).read_bytes()) == model


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 3}, Usage(5, 3, 0, 8)),
        ({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 9}, Usage(5, 3, 0, 9)),
        ({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}, Usage(5, 0, 4, 5)),
        ({"prompt_tokens": 5, "prompt_tokens_details": None}, Usage(5, 0, 0, 5)),
        ({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, Usage()),
        ({"prompt_tokens": 21.0}, Usage(21, 0, 0, 21)),
        # Anthropic: input_tokens excludes cache reads and writes, which are prompt tokens too.
        ({"input_tokens": 10, "output_tokens": 2}, Usage(10, 2, 0, 12)),
        (
            {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 30},
            Usage(40, 2, 30, 42),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 2,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 5,
            },
            Usage(45, 2, 30, 47),
        ),
        # The Responses API shape: input_tokens includes the cached ones.
        (
            {
                "input_tokens": 9,
                "output_tokens": 1,
                "total_tokens": 10,
                "input_tokens_details": {"cached_tokens": 4},
            },
            Usage(9, 1, 4, 10),
        ),
        ({"type": "duration", "seconds": 35}, Usage(audio_seconds=35.0)),
        ({"type": "duration", "seconds": 2.5}, Usage(audio_seconds=2.5)),
        ({"type": "tokens", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}, Usage(7, 3, 0, 10)),
    ],
)
def test_usage_shapes(usage, expected):
    assert usage_from_object({"usage": usage}) == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        -1,
        -0.5,
        1.5,
        "21",
        None,
        [21],
        {"n": 21},
        float("nan"),
        float("inf"),
        MAX_COUNT + 1,
        10**400,
    ],
)
def test_bad_numbers_are_ignored(value):
    assert usage_from_object({"usage": {"prompt_tokens": value}}) is None
    assert usage_from_object({"usage": {"prompt_tokens": value, "completion_tokens": 2}}) == Usage(0, 2, 0, 2)
    details = {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": value}}
    assert usage_from_object({"usage": details}) == Usage(3, 0, 0, 3)


@pytest.mark.parametrize("value", [True, -1, -0.5, "35", None, [35], float("nan"), float("inf"), 10**400])
def test_bad_seconds_are_ignored(value):
    assert usage_from_object({"usage": {"type": "duration", "seconds": value}}) is None


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "usage",
        42,
        {},
        {"usage": None},
        {"usage": []},
        {"usage": "29"},
        {"usage": {}},
        {"usage": {"unknown": 3}},
        {"message": "x"},
        {"message": {"usage": 3}},
        {"choices": []},
    ],
)
def test_objects_without_usage(obj):
    assert usage_from_object(obj) is None


def test_anthropic_message_start_nests_usage_in_message():
    event = {
        "type": "message_start",
        "message": {"model": "m", "usage": {"input_tokens": 25, "output_tokens": 1}},
    }
    assert usage_from_object(event) == Usage(25, 1, 0, 26)
    assert model_from_object(event) == "m"


def test_accumulator_keeps_the_last_value_of_each_field():
    acc = UsageAccumulator()
    assert acc.usage is None
    assert not acc.add({"choices": []})
    for completion in (1, 2, 3):
        assert acc.add({"usage": {"prompt_tokens": 21, "completion_tokens": completion}})
    assert acc.usage == Usage(21, 3, 0, 24)
    acc.add(
        {
            "usage": {
                "prompt_tokens": 21,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 16},
            }
        }
    )
    acc.add({"usage": {"prompt_tokens": 21, "completion_tokens": 4}})
    assert acc.usage == Usage(21, 4, 16, 25)


def test_accumulator_merges_anthropic_stream_events():
    acc = UsageAccumulator()
    acc.add(
        {
            "type": "message_start",
            "message": {"usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}},
        }
    )
    acc.add({"type": "message_delta", "usage": {"output_tokens": 7}})
    acc.add({"type": "message_delta", "usage": {"output_tokens": 15}})
    assert acc.usage == Usage(30, 15, 5, 45)


def test_accumulator_ignores_bad_fields_without_forgetting_good_ones():
    acc = UsageAccumulator()
    acc.add({"usage": {"prompt_tokens": 21, "completion_tokens": 8}})
    acc.add({"usage": {"prompt_tokens": -1, "completion_tokens": "9"}})
    assert acc.usage == Usage(21, 8, 0, 29)


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"{",
        b"not json",
        b"[1, 2]",
        b'"usage"',
        b"null",
        b"\xff\xfe{}",
        b"[" * 100_000,
        b'{"usage": {"prompt_tokens": 1}' + b"}" * 3,
    ],
)
def test_bad_bodies(body):
    assert json_object(body) is None
    assert usage_from_json_body(body) is None
    assert model_from_json_body(body) is None


def test_request_body_model():
    body = json.dumps({"model": "gemma-3-27b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert model_from_json_body(body) == "gemma-3-27b"


@pytest.mark.parametrize("model", [None, 3, True, "", "m" * 257, ["gpt"], {"id": "gpt"}])
def test_odd_models_are_none(model):
    assert model_from_object({"model": model}) is None


def test_usage_is_frozen():
    with pytest.raises(AttributeError):
        Usage().prompt_tokens = 3


def test_usage_of_a_large_body_is_read_from_its_end():
    big = {
        "object": "list",
        "data": [{"embedding": [0.1] * 100_000}],
        "model": "m",
        "usage": {"prompt_tokens": 13, "total_tokens": 13},
    }
    body = json.dumps(big).encode()
    assert len(body) > LARGE_BODY_BYTES
    assert usage_from_large_body(body) == Usage(prompt_tokens=13, total_tokens=13)
    assert usage_from_large_body(b'{"data": [1, 2, 3]}') is None
    assert usage_from_large_body(b'{"usage": {"prompt_tokens": 1') is None
