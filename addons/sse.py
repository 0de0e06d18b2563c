"""An incremental server-sent-events tap that reads usage from a passing stream, in bounded memory."""

from __future__ import annotations

import json
import re

from addons.usage import Usage, UsageAccumulator, model_from_object

# A line ends in CRLF, LF or CR (the SSE spec). The alternation tries CRLF first.
_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SseUsageTap:
    """A `flow.response.stream` callable: forwards the bytes, reads usage, model and end markers.

    Events are found incrementally (each byte is scanned once) and only an event that may carry
    something of interest is parsed. Of the event being received at most `max_event_bytes` are
    kept; a longer event is forwarded but not parsed.

    With `strip_usage_only_chunk`, complete events are forwarded as soon as they are complete and
    the usage-only final chunk (`"choices": []` and a `usage` object) is dropped after its usage is
    read; every other byte goes out unchanged. Without it each chunk is returned as it came.
    """

    def __init__(self, strip_usage_only_chunk: bool = False, max_event_bytes: int = 1 << 20) -> None:
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
        self.strip_usage_only_chunk = strip_usage_only_chunk
        self.max_event_bytes = max_event_bytes
        self.events = 0  # events read (blank-line terminated blocks, and a pending one at the end)
        self.skipped_events = 0  # events over max_event_bytes, forwarded unread
        self.stripped_events = 0  # usage-only chunks dropped
        self.closed = False  # the end of the stream (b"") was seen
        self._accumulator = UsageAccumulator()
        self._model: str | None = None
        self._done = False
        self._message_stop = False
        self._error = False
        self._held = bytearray()  # the current event's bytes from earlier chunks
        self._skipping = False  # the current event is over max_event_bytes
        self._at_line_start = True
        self._cr = False  # the last chunk ended in CR: a leading LF of the next completes a CRLF
        self._cr_ended_event = False  # ...and that CR ended the blank line of an event
        self._dropped_last = False
        self._started = False
        self.received = 0  # bytes of the stream so far: how UPSTREAM_IDLE_TIMEOUT sees it move

    @property
    def usage(self) -> Usage | None:
        """The usage reported last (per field), or None if the stream carried none."""
        return self._accumulator.usage

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def saw_done(self) -> bool:
        """`data: [DONE]`, the end of an OpenAI stream, was seen."""
        return self._done

    @property
    def saw_message_stop(self) -> bool:
        """Anthropic's `message_stop` event, the end of a Messages stream, was seen."""
        return self._message_stop

    @property
    def complete(self) -> bool:
        """The upstream sent its end-of-stream marker ([DONE] or message_stop)."""
        return self._done or self._message_stop

    @property
    def error(self) -> bool:
        """An `event: error`, or a data object with a top-level `error` (or `"type": "error"`)."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes of the current event held in memory; never more than max_event_bytes after a call."""
        return len(self._held)

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if not chunk:
            return self._finish()
        self.received += len(chunk)
        strip = self.strip_usage_only_chunk
        out: list[bytes] = []
        pos = seg = 0  # pos: start of the current line; seg: start of the current event in chunk
        if self._cr:
            self._cr = False
            if chunk[0] == 0x0A:
                pos = 1
                if self._cr_ended_event:
                    seg = 1
                    if strip and not self._dropped_last:
                        out.append(b"\n")
        at_line_start = self._at_line_start
        ended_event = False
        for match in _EOL.finditer(chunk, pos):
            start, end = match.span()
            ended_event = start == pos and at_line_start
            if ended_event:
                self._end_event(chunk, seg, end, out)
                seg = end
            at_line_start = True
            pos = end
        self._at_line_start = pos == len(chunk)
        if chunk[-1] == 0x0D:
            self._cr = True
            self._cr_ended_event = ended_event and pos == len(chunk)
        self._keep_tail(chunk, seg, out)
        if not strip:
            return chunk
        if not out:
            return []  # not b"": mitmproxy would send it as HTTP/1.1's last chunk, ending the body
        return out[0] if len(out) == 1 else b"".join(out)

    def _end_event(self, chunk: bytes, seg: int, end: int, out: list[bytes]) -> None:
        """The blank line at chunk[:end] ends an event: read it, and forward it unless dropped."""
        self.events += 1
        self._dropped_last = False
        if self._skipping:  # the rest of an over-long event, forwarded as it came
            self._skipping = False
            if self.strip_usage_only_chunk:
                out.append(chunk[seg:end])
            return
        if self._held:
            block = bytes(self._held) + chunk[seg:end]
            self._held.clear()
        else:
            block = chunk[seg:end]
        if len(block) > self.max_event_bytes:
            self.skipped_events += 1
        elif self._read(block, self.strip_usage_only_chunk):
            self._dropped_last = True
            return
        if self.strip_usage_only_chunk:
            out.append(block)

    def _keep_tail(self, chunk: bytes, seg: int, out: list[bytes]) -> None:
        """Hold the start of the event still being received, unless that makes it over-long."""
        if seg == len(chunk):
            return
        if self._skipping:
            if self.strip_usage_only_chunk:
                out.append(chunk[seg:])
            return
        if len(self._held) + len(chunk) - seg <= self.max_event_bytes:
            self._held += memoryview(chunk)[seg:]
            return
        self._skipping = True
        self.skipped_events += 1
        if self.strip_usage_only_chunk:
            out.append(bytes(self._held))
            out.append(chunk[seg:])
        self._held.clear()

    def _finish(self) -> bytes:
        """The end of the stream: read what is pending (leniently) and forward it, never dropped."""
        self.closed = True
        self._cr = False
        self._at_line_start = True
        if self._skipping:
            self._skipping = False
            self.events += 1
            return b""
        block = bytes(self._held)
        self._held.clear()
        if block:
            self.events += 1
            self._read(block, False)
        return block if self.strip_usage_only_chunk else b""

    def _read(self, block: bytes, strip: bool) -> bool:
        """Read one event; True if it is a usage-only chunk to drop."""
        if not self._started:
            self._started = True
            if block.startswith(_BOM):
                block = block[len(_BOM) :]
        # Most events carry nothing of interest: skip them without splitting or parsing.
        if not (
            b"usage" in block
            or b"error" in block
            or b"[DONE]" in block
            or b"message_stop" in block
            or (self._model is None and b"model" in block)
        ):
            return False
        event = b""
        data: list[bytes] = []
        for line in block.splitlines():
            if not line or line[0] == 0x3A:  # blank, or a comment such as ": heartbeat"
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
        if event == b"error":
            self._error = True
        elif event == b"message_stop":
            self._message_stop = True
        if not data:
            return False
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload.strip() == b"[DONE]":
            self._done = True
            return False
        return self._read_json(payload, strip)

    def _read_json(self, payload: bytes, strip: bool) -> bool:
        if payload.lstrip()[:1] != b"{":
            return False
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type")
        if obj.get("error") is not None or kind == "error":
            self._error = True
        elif kind == "message_stop":
            self._message_stop = True
        if self._model is None:
            self._model = model_from_object(obj)
        self._accumulator.add(obj)
        drop = strip and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
        if drop:
            self.stripped_events += 1
        return drop
