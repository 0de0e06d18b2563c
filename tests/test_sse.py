"""The SSE usage tap: the same reading and the same bytes out however the stream is cut."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.sse import SseUsageTap
from addons.usage import Usage, UsageAccumulator, model_from_object

SAMPLES = Path(__file__).resolve().parent / "samples"
STREAMS = sorted(p.name for p in SAMPLES.glob("*.sse"))
EOLS = (b"\n", b"\r\n", b"\r")

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What each sample must read as, beside the usage figures checked in test_usage.py.
FLAGS = {
    "chat_stream_include_usage.sse": {
        "model": "gpt-oss-120b",
        "saw_done": True,
        "complete": True,
        "error": False,
        "stripped_events": 1,
    },
    "chat_stream_no_usage.sse": {
        "model": "gpt-oss-120b",
        "saw_done": True,
        "complete": True,
        "error": False,
        "stripped_events": 0,
    },
    "chat_stream_privatemode.sse": {
        "model": "gpt-oss-120b",
        "saw_done": True,
        "complete": True,
        "error": False,
        "stripped_events": 1,
    },
    "messages_stream.sse": {
        "model": "gpt-oss-120b",
        "saw_done": False,
        "complete": True,
        "error": False,
        "stripped_events": 0,
    },
    "upstream_error_stream.sse": {
        "model": None,
        "saw_done": False,
        "complete": False,
        "error": True,
        "stripped_events": 0,
    },
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def reading(tap: SseUsageTap) -> dict:
    return {
        "usage": tap.usage,
        "model": tap.model,
        "saw_done": tap.saw_done,
        "saw_message_stop": tap.saw_message_stop,
        "complete": tap.complete,
        "error": tap.error,
        "events": tap.events,
        "skipped_events": tap.skipped_events,
        "stripped_events": tap.stripped_events,
    }


def cut(body: bytes, points) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def feed(body: bytes, points=(), **options) -> tuple[SseUsageTap, bytes]:
    """Run `body` through a tap in the chunks `points` cut it into; check the per-call promises."""
    tap = SseUsageTap(**options)
    out = []
    for chunk in cut(body, points):
        result = tap(chunk)
        if tap.strip_usage_only_chunk:
            # b"" mid-stream would be sent as the last chunk of an HTTP/1.1 chunked body.
            assert result != b""
        else:
            assert result is chunk
        out.append(result if isinstance(result, bytes) else b"".join(result))
        assert tap.buffered <= tap.max_event_bytes
    out.append(tap(b""))
    assert tap.buffered == 0
    assert tap.closed
    return tap, b"".join(out)


def split_points(body: bytes):
    return st.lists(st.integers(0, len(body)), max_size=40)


# --- an independent reading of a whole stream, straight from the SSE spec, for comparison ---

BLANK = (b"\n", b"\r", b"\r\n")


def reference(body: bytes, strip: bool = False, max_event_bytes: int = 1 << 20) -> tuple[dict, bytes]:
    acc = UsageAccumulator()
    seen = {"model": None, "saw_done": False, "saw_message_stop": False, "error": False}
    counts = {"events": 0, "skipped_events": 0, "stripped_events": 0}

    def read(raw: bytes) -> bool:
        counts["events"] += 1
        if len(raw) > max_event_bytes:
            counts["skipped_events"] += 1
            return False
        event, data = b"", []
        for line in raw.splitlines():
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
        seen["error"] |= event == b"error"
        seen["saw_message_stop"] |= event == b"message_stop"
        payload = b"\n".join(data)
        if not data:
            return False
        if payload.strip() == b"[DONE]":
            seen["saw_done"] = True
            return False
        try:
            obj = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        seen["error"] |= obj.get("error") is not None or obj.get("type") == "error"
        seen["saw_message_stop"] |= obj.get("type") == "message_stop"
        seen["model"] = seen["model"] or model_from_object(obj)
        acc.add(obj)
        drop = strip and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
        counts["stripped_events"] += drop
        return drop

    out, block = [], []
    for line in body.splitlines(keepends=True):
        block.append(line)
        if line in BLANK:
            raw = b"".join(block)
            if not read(raw):
                out.append(raw)
            block = []
    if block:
        raw = b"".join(block)
        read(raw)
        out.append(raw)
    result = {"usage": acc.usage, **seen, "complete": seen["saw_done"] or seen["saw_message_stop"], **counts}
    return result, b"".join(out)


# --- streams as lines, so that line ends can be changed and lines inserted while the expected
# output (the stream minus its usage-only event) stays known ---


def lines_of(name: str) -> list[bytes]:
    body = sample(name).replace(b"\r\n", b"\n")
    assert body.endswith(b"\n")
    return body[:-1].split(b"\n")


def is_usage_only(line: bytes) -> bool:
    return line.startswith(b"data: {") and b'"choices":[]' in line and b'"usage"' in line


def assemble(lines: list[bytes], eols: list[bytes]) -> tuple[bytes, bytes]:
    """The stream, and the stream without the event (lines up to its blank line) of a usage-only chunk."""
    body, stripped, event = [], [], []
    for line, eol in zip(lines, eols, strict=True):
        body.append(line + eol)
        event.append(line + eol)
        if line == b"":
            if not any(is_usage_only(x) for x in event):
                stripped.extend(event)
            event = []
    stripped.extend(event)
    return b"".join(body), b"".join(stripped)


def safe_eols(lines: list[bytes], eols: list[bytes]) -> list[bytes]:
    """Keep a CR line end and the LF of a following blank line from reading as one CRLF."""
    eols = list(eols)
    for i in range(1, len(eols)):
        if eols[i - 1] == b"\r" and lines[i] == b"" and eols[i] == b"\n":
            eols[i] = b"\r\n"
    return eols


def without_events(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "events"}


# --- the samples ---


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("strip", [False, True])
def test_sample_in_one_chunk_reads_as_expected(name, strip):
    tap, out = feed(sample(name), strip_usage_only_chunk=strip)
    for key, value in FLAGS[name].items():
        expected = value if key != "stripped_events" or strip else 0
        assert reading(tap)[key] == expected, key
    expected_out = assemble(
        lines_of(name), [b"\r\n" if b"\r\n" in sample(name) else b"\n"] * len(lines_of(name))
    )
    assert out == (expected_out[1] if strip else sample(name))
    assert reading(tap) == reference(sample(name), strip)[0]


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("strip", [False, True])
def test_sample_cut_at_every_single_point(name, strip):
    body = sample(name)
    whole, whole_out = feed(body, strip_usage_only_chunk=strip)
    for point in range(1, len(body)):
        tap, out = feed(body, [point], strip_usage_only_chunk=strip)
        assert (reading(tap), out) == (reading(whole), whole_out), point
    tap, out = feed(body, range(len(body)), strip_usage_only_chunk=strip)  # byte by byte
    assert (reading(tap), out) == (reading(whole), whole_out)


@pytest.mark.parametrize("name", STREAMS)
@PROPERTY
@given(data=st.data())
def test_sample_cut_anywhere(name, data):
    body = sample(name)
    points = data.draw(split_points(body))
    strip = data.draw(st.booleans())
    tap, out = feed(body, points, strip_usage_only_chunk=strip)
    expected, expected_out = reference(body, strip)
    assert reading(tap) == expected
    assert out == expected_out
    if not strip:
        assert out == body


@PROPERTY
@given(name=st.sampled_from(STREAMS), data=st.data())
def test_sample_with_any_line_ends(name, data):
    lines = lines_of(name)
    eol = data.draw(st.sampled_from([*EOLS, None]))
    eols = (
        [eol] * len(lines)
        if eol
        else data.draw(st.lists(st.sampled_from(EOLS), min_size=len(lines), max_size=len(lines)))
    )
    body, stripped = assemble(lines, safe_eols(lines, eols))
    strip = data.draw(st.booleans())
    tap, out = feed(body, data.draw(split_points(body)), strip_usage_only_chunk=strip)
    assert out == (stripped if strip else body)
    single, _ = feed(sample(name), strip_usage_only_chunk=strip)
    assert reading(tap) == reading(single)


@PROPERTY
@given(name=st.sampled_from(STREAMS), data=st.data())
def test_sample_with_heartbeats(name, data):
    lines = lines_of(name)
    comments = [b": heartbeat", b":", b": ping " + b"x" * 40, b':data: {"usage":{"prompt_tokens":999}}']
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(lines)))
        comment = data.draw(st.sampled_from(comments))
        # Either its own block between two events, or a line within an event.
        block = data.draw(st.booleans()) and (at == 0 or lines[at - 1] == b"")
        lines[at:at] = [comment, b""] if block else [comment]
    eols = safe_eols(
        lines, data.draw(st.lists(st.sampled_from(EOLS), min_size=len(lines), max_size=len(lines)))
    )
    body, stripped = assemble(lines, eols)
    strip = data.draw(st.booleans())
    tap, out = feed(body, data.draw(split_points(body)), strip_usage_only_chunk=strip)
    assert out == (stripped if strip else body)
    single, _ = feed(sample(name), strip_usage_only_chunk=strip)
    assert without_events(reading(tap)) == without_events(reading(single))


# --- memory bound ---


@PROPERTY
@given(data=st.data())
def test_over_long_event_is_forwarded_unread_and_reading_recovers(data):
    limit = 512  # above every event of the sample
    lines = lines_of("chat_stream_privatemode.sse")
    pad = data.draw(st.integers(limit, 4 * limit))
    kind = data.draw(st.sampled_from(["data", "comment", "usage", "many-lines"]))
    if kind == "data":
        long_event = [b'data: {"x":"' + b"a" * pad + b'"}']
    elif kind == "comment":
        long_event = [b": " + b"a" * pad]
    elif kind == "usage":  # an over-long event is not read, even when it carries usage
        long_event = [b'data: {"choices":[],"usage":{"prompt_tokens":999},"pad":"' + b"a" * pad + b'"}']
    else:
        long_event = [b"data: " + b"a" * 20] * (pad // 20)
    at = data.draw(st.sampled_from([i for i, line in enumerate(lines) if line == b""])) + 1
    lines[at:at] = [*long_event, b""]
    eols = safe_eols(
        lines, data.draw(st.lists(st.sampled_from(EOLS), min_size=len(lines), max_size=len(lines)))
    )
    body, _ = assemble(lines, eols)
    strip = data.draw(st.booleans())
    tap, out = feed(body, data.draw(split_points(body)), strip_usage_only_chunk=strip, max_event_bytes=limit)
    assert tap.skipped_events == 1
    assert tap.usage == Usage(21, 8, 16, 29)
    assert tap.saw_done and tap.model == "gpt-oss-120b"
    expected, expected_out = reference(body, strip, max_event_bytes=limit)
    assert out == expected_out
    assert reading(tap) == expected
    if not strip:
        assert out == body


def test_buffer_stays_bounded_while_an_endless_event_streams():
    tap = SseUsageTap(max_event_bytes=1000)
    for _ in range(10_000):
        tap(b"data: " + b"a" * 94)
        assert tap.buffered <= 1000
    tap(b"\n\n" + sample("chat_stream_privatemode.sse"))
    assert tap.usage == Usage(21, 8, 16, 29)
    assert tap.skipped_events == 1


# --- anything at all ---

SOUP = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"data:",
            b"data",
            b"event: error",
            b"event: message_stop",
            b"event:ping",
            b": hb",
            b"id: 1",
            b"retry: 10",
            b"\n",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"[DONE]",
            b" ",
            b"x",
            b"\xe2\x82",
            b"\xac",
            b"{",
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
            b'{"model":"m1","choices":[{"delta":{}}],"usage":{"prompt_tokens":2,"completion_tokens":2}}',
            b'{"type":"message_start","message":{"model":"m2","usage":{"input_tokens":5}}}',
            b'{"type":"message_delta","usage":{"output_tokens":6}}',
            b'{"error":{"message":"x"}}',
            b'{"type":"message_stop"}',
            b'{"usage":{"prompt_tokens":-1}}',
        ]
    ),
    max_size=60,
).map(b"".join)


@PROPERTY
@given(body=SOUP, data=st.data())
def test_any_stream_reads_like_the_spec_however_cut(body, data):
    strip = data.draw(st.booleans())
    limit = data.draw(st.sampled_from([1 << 20, 64]))
    tap, out = feed(body, data.draw(split_points(body)), strip_usage_only_chunk=strip, max_event_bytes=limit)
    expected, expected_out = reference(body, strip, limit)
    assert reading(tap) == expected
    assert out == expected_out


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=400), points=st.lists(st.integers(0, 400)), strip=st.booleans())
def test_random_bytes_never_raise(body, points, strip):
    tap, out = feed(body, [p for p in points if p <= len(body)], strip_usage_only_chunk=strip)
    if not strip:
        assert out == body


# --- particular cases ---


def test_multi_line_data_is_joined_with_newlines():
    tap, _ = feed(b'data: {"usage":\ndata: {"prompt_tokens": 4}}\n\n')
    assert tap.usage == Usage(4, 0, 0, 4)


def test_pending_event_is_read_at_the_end_and_forwarded():
    body = b'data: {"choices":[],"usage":{"prompt_tokens":4}}\n\ndata: [DONE]'
    tap, out = feed(body, [10, 50], strip_usage_only_chunk=True)
    assert tap.saw_done and tap.usage == Usage(4, 0, 0, 4)
    assert out == b"data: [DONE]"


def test_strip_holds_a_partial_event_and_returns_no_empty_bytes():
    tap = SseUsageTap(strip_usage_only_chunk=True)
    assert tap(b'data: {"choi') == []
    assert tap(b'ces":[],"usage":{"prompt_tokens":4}}\n') == []
    assert tap(b"\n") == []
    assert tap(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert tap(b": tail") == []
    assert tap(b"") == b": tail"
    assert tap.stripped_events == 1


def test_a_lf_split_from_its_cr_goes_with_a_dropped_event():
    tap = SseUsageTap(strip_usage_only_chunk=True)
    assert tap(b'data: {"choices":[],"usage":{"prompt_tokens":4}}\r\n\r') == []
    assert tap(b"\ndata: [DONE]\r\n\r") == b"data: [DONE]\r\n\r"
    assert tap(b"\n") == b"\n"
    assert tap(b"") == b""


def test_byte_order_mark_is_ignored_for_reading_but_forwarded():
    body = (
        b"\xef\xbb\xbfdata: " + json.dumps({"model": "m", "usage": {"prompt_tokens": 1}}).encode() + b"\n\n"
    )
    tap, out = feed(body)
    assert out == body
    assert tap.model == "m" and tap.usage == Usage(1, 0, 0, 1)


def test_utf8_split_inside_a_character():
    body = json.dumps(
        {"model": "m", "choices": [{"delta": {"content": "€€"}}], "usage": {"prompt_tokens": 2}},
        ensure_ascii=False,
    ).encode()
    body = b"data: " + body + b"\n\n"
    at = body.index("€".encode()) + 1
    tap, out = feed(body, [at, at + 1])
    assert out == body and tap.usage == Usage(2, 0, 0, 2)


def test_event_error_with_data():
    tap, _ = feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n')
    assert tap.error and not tap.complete


def test_event_types_without_data():
    tap, _ = feed(b"event: message_stop\n\n")
    assert tap.saw_message_stop and tap.complete and not tap.saw_done


def test_only_the_usage_only_chunk_is_stripped():
    kept = [
        b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}\n\n',
        b'data: {"choices":[],"usage":null}\n\n',
        b'data: {"choices":[]}\n\n',
        b'data: {"usage":{"prompt_tokens":1}}\n\n',
        b'data: [{"choices":[],"usage":{}}]\n\n',
    ]
    body = b"".join(kept)
    tap, out = feed(body, strip_usage_only_chunk=True)
    assert out == body
    assert tap.stripped_events == 0


def test_non_positive_bound_is_refused():
    with pytest.raises(ValueError, match="max_event_bytes"):
        SseUsageTap(max_event_bytes=0)


def test_reference_helpers_agree_with_the_samples():
    for name in STREAMS:
        body = sample(name)
        eol = b"\r\n" if b"\r\n" in body else b"\n"
        assert assemble(lines_of(name), [eol] * len(lines_of(name)))[0] == body
        assert re.sub(rb"(\r\n|\n)", b"", reference(body)[1]) == re.sub(rb"(\r\n|\n)", b"", body)
