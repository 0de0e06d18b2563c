"""A fast, small fake privatemode-proxy for integration tests and benchmarks.

Run it as a process on loopback::

    python tests/fake_upstream.py --port P [--host 127.0.0.1] [--samples DIR]
                                  [--tls-cert CHAIN.pem --tls-key KEY.pem]

It prints ``fake upstream listening on HOST:PORT`` (flushed) once it accepts connections;
``--port 0`` picks a free port and the line tells which. With ``--tls-cert`` and ``--tls-key``
it speaks HTTPS (HTTP/1.1 only, no ALPN), like an OpenAI-compatible server behind TLS.

It replays the samples of ``tests/samples`` byte for byte, on the routes
privatemode-proxy serves. Request headers steer it (values are case-insensitive; several
scenarios may be given comma-separated):

``x-fake-scenario``
    ``include-usage``  streamed chat/completions behave like a plain OpenAI-compatible server:
                       usage only in a final chunk, and only if ``stream_options.include_usage``.
    ``error``          400 (or ``x-fake-status``) with ``upstream_error.json`` and
                       ``Privatemode-Encrypted: false``; as SSE when ``Accept: text/event-stream``.
    ``slow``           sleep ``x-fake-delay-s`` seconds (default 5) before sending headers.
    ``break``          send the first 2 SSE events of the stream, then drop the connection.
    ``fast``           a tiny fixed JSON reply with usage (also ``GET /fast``), for benchmarks.
    ``hold-stream``    stream the events one per ``x-fake-chunk-delay-ms`` (default 200 ms).
``x-fake-chunk-delay-ms``  pause before each SSE event (default 0).
``x-fake-delay-s``         seconds for ``slow``.
``x-fake-status``          status code for ``error`` (default 400).

The same controls may come as query parameters without the ``x-`` (``?fake-scenario=slow``):
the gateway forwards only the headers an API call needs, but forwards the query string.

Introspection: ``GET /_fake/requests`` (the recorded requests, oldest first: method, path,
target, query, headers, body_length, body_complete, json, outcome, ts), ``POST /_fake/reset``,
``GET /_fake/stats`` (``in_flight``, ``max_in_flight``, ``connections`` and a few totals).
``/_fake/...`` requests are not recorded.

Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

DEFAULT_SAMPLES = Path(__file__).resolve().parent / "samples"

READ_CHUNK = 64 * 1024
HEADER_LIMIT = 256 * 1024
KEEP_BODY_LIMIT = 8 * 1024 * 1024  # larger non-multipart bodies are counted, not kept
RECORD_LIMIT = 1000
WATCH_INTERVAL = 0.05  # how often a sleeping request checks whether its client hung up

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

JSON_CT = "application/json"
SSE_CT = "text/event-stream"
FAST_BODY = b'{"ok":true,"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
UNSTRUCTURED_BODY = b'[{"type":"Title","text":"x"}]'
NOT_FOUND_BODY = b"404 page not found\n"

_EVENT_RE = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r|\Z)", re.S)


class BadRequest(Exception):
    pass


class ClientGone(Exception):
    pass


def split_events(data: bytes) -> list[bytes]:
    """Split an SSE stream into events, each keeping its terminating blank line.

    Joining the result gives back ``data`` exactly.
    """
    return [m for m in _EVENT_RE.findall(data) if m]


def _chat_to_completion_event(event: bytes) -> bytes:
    """Turn one chat.completion.chunk SSE event into a text_completion one (same line ends)."""
    eol = b"\r\n" if b"\r\n" in event else b"\n"
    out = []
    for line in event.split(eol):
        if line.startswith(b"data: {"):
            obj = json.loads(line[6:])
            obj["id"] = obj["id"].replace("chatcmpl-", "cmpl-")
            obj["object"] = "text_completion"
            obj["choices"] = [
                {
                    "index": c.get("index", 0),
                    "text": c.get("delta", {}).get("content", ""),
                    "logprobs": None,
                    "finish_reason": c.get("finish_reason"),
                }
                for c in obj.get("choices", [])
            ]
            line = b"data: " + json.dumps(obj, separators=(",", ":")).encode()
        out.append(line)
    return eol.join(out)


def _with_query_controls(headers: dict[str, str], query: str) -> dict[str, str]:
    controls = {
        f"x-{name.lower()}": value
        for name, value in urllib.parse.parse_qsl(query)
        if name.lower().startswith("fake-")
    }
    return {**headers, **controls} if controls else headers


def _response(
    status: int, content_type: str | None, body: bytes, extra: str = "", close: bool = False
) -> bytes:
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
    if content_type:
        head += f"content-type: {content_type}\r\n"
    head += f"content-length: {len(body)}\r\n{extra}"
    if close:
        head += "connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


class FakeUpstream:
    """State and request handling; one instance per server."""

    def __init__(self, samples_dir: Path | str | None = None) -> None:
        d = Path(samples_dir) if samples_dir else DEFAULT_SAMPLES

        def load(name: str) -> bytes:
            return (d / name).read_bytes()

        self.chat = load("chat.json")
        self.embeddings = load("embeddings.json")
        self.transcription = load("transcription.json")
        self.models = load("models.json")
        self.messages = load("messages.json")
        self.error = load("upstream_error.json")
        self.stream_privatemode = split_events(load("chat_stream_privatemode.sse"))
        self.stream_include_usage = split_events(load("chat_stream_include_usage.sse"))
        self.stream_no_usage = split_events(load("chat_stream_no_usage.sse"))
        self.stream_messages = split_events(load("messages_stream.sse"))
        self.stream_error = split_events(load("upstream_error_stream.sse"))

        chat = json.loads(self.chat)
        text = chat["choices"][0]["message"]["content"]
        completion = {
            "id": chat["id"].replace("chatcmpl-", "cmpl-"),
            "object": "text_completion",
            "created": chat["created"],
            "model": chat["model"],
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": chat["usage"],
        }
        self.completion = json.dumps(completion, indent=2).encode() + b"\n"
        self.cstream_privatemode = [_chat_to_completion_event(e) for e in self.stream_privatemode]
        self.cstream_include_usage = [_chat_to_completion_event(e) for e in self.stream_include_usage]
        self.cstream_no_usage = [_chat_to_completion_event(e) for e in self.stream_no_usage]

        self._fast = _response(200, JSON_CT, FAST_BODY)
        self._fast_close = _response(200, JSON_CT, FAST_BODY, close=True)

        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECORD_LIMIT)
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.connections_total = 0
        self.requests_total = 0
        self._writers: set[asyncio.StreamWriter] = set()

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "connections": self.connections,
            "connections_total": self.connections_total,
            "requests_total": self.requests_total,
        }

    def reset(self) -> None:
        self.requests.clear()
        self.max_in_flight = self.in_flight
        self.connections_total = self.connections
        self.requests_total = 0

    def close_connections(self) -> None:
        """Drop every open client connection (used when stopping)."""
        for writer in list(self._writers):
            writer.transport.abort()

    # -- connection loop -----------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connections_total += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # clean close between requests (or a truncated head)
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, "text/plain", b"header too large\n", close=True))
                    return
                try:
                    keep_alive = await self._request(head, reader, writer)
                except BadRequest as exc:
                    writer.write(_response(400, "text/plain", f"{exc}\n".encode(), close=True))
                    return
                if not keep_alive:
                    return
        except (ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("malformed header line")
            name = name.strip().lower()
            value = value.strip()
            if name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value

        conn = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in conn
        else:
            keep_alive = "keep-alive" in conn
        close = not keep_alive

        path, _, query = target.partition("?")
        self.requests_total += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        record: dict[str, Any] | None = None
        if not path.startswith("/_fake/"):
            record = {
                "method": method,
                "path": path,
                "target": target,
                "query": query,
                "headers": headers,
                "body_length": 0,
                "body_complete": False,
                "json": None,
                "outcome": "pending",
                "ts": time.time(),
            }
            self.requests.append(record)
        try:
            headers = _with_query_controls(headers, query)
            scenario = headers.get("x-fake-scenario", "").lower()

            # Fast path: benchmark replies, no body work beyond draining it.
            if scenario == "fast" or (path == "/fast" and not scenario):
                await self._read_body(headers, reader, writer, record, keep=False)
                writer.write(self._fast_close if close else self._fast)
                await writer.drain()
                if record is not None:
                    record["outcome"] = "complete"
                return keep_alive

            ctype = headers.get("content-type", "").lower()
            keep = "multipart" not in ctype and ("json" in ctype or not ctype)
            body = await self._read_body(headers, reader, writer, record, keep=keep)
            data: Any = None
            if body and keep:
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                    if "json" in ctype:
                        writer.write(
                            _response(
                                400,
                                JSON_CT,
                                b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}',
                                close=close,
                            )
                        )
                        await writer.drain()
                        if record is not None:
                            record["outcome"] = "complete"
                        return keep_alive
                if record is not None:
                    record["json"] = data

            outcome = await self._route(method, path, headers, scenario, data, reader, writer, close)
            if record is not None:
                record["outcome"] = outcome
            return keep_alive and outcome == "complete"
        except (ClientGone, ConnectionError, asyncio.IncompleteReadError):
            if record is not None:
                record["outcome"] = "client_disconnected"
            raise
        finally:
            self.in_flight -= 1

    async def _read_body(
        self,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: dict[str, Any] | None,
        keep: bool,
    ) -> bytes:
        """Read the request body in pieces; return it if ``keep`` (and small), else b""."""
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is None and cl is None:
            if record is not None:
                record["body_complete"] = True
            return b""
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        parts: list[bytes] = []
        kept = 0
        total = 0
        if te is not None:
            if te.lower().replace(" ", "") != "chunked":
                raise BadRequest("unsupported transfer-encoding")
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("malformed chunk size") from None
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                remaining = size
                while remaining:
                    piece = await reader.read(min(remaining, READ_CHUNK))
                    if not piece:
                        raise ClientGone
                    remaining -= len(piece)
                    total += len(piece)
                    if record is not None:
                        record["body_length"] = total
                    if keep and kept + len(piece) <= KEEP_BODY_LIMIT:
                        parts.append(piece)
                        kept += len(piece)
                    else:
                        keep = False
                if await reader.readexactly(2) != b"\r\n":
                    raise BadRequest("malformed chunk")
        else:
            try:
                remaining = int(cl or "")
            except ValueError:
                raise BadRequest("malformed content-length") from None
            if remaining < 0:
                raise BadRequest("malformed content-length")
            if keep and remaining <= KEEP_BODY_LIMIT:
                body = await reader.readexactly(remaining) if remaining else b""
                if record is not None:
                    record["body_length"] = remaining
                    record["body_complete"] = True
                return body
            keep = False
            while remaining:
                piece = await reader.read(min(remaining, READ_CHUNK))
                if not piece:
                    raise ClientGone
                remaining -= len(piece)
                total += len(piece)
                if record is not None:
                    record["body_length"] = total
        if record is not None:
            record["body_complete"] = True
        return b"".join(parts) if keep else b""

    # -- routes --------------------------------------------------------------------------

    async def _route(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        scenario: str,
        data: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        close: bool,
    ) -> str:
        if path.startswith("/_fake/"):
            return await self._introspect(method, path, writer, close)

        scenarios = {s.strip() for s in scenario.split(",")} if scenario else set()
        if "slow" in scenarios:
            try:
                delay = float(headers.get("x-fake-delay-s", "5"))
            except ValueError:
                delay = 5.0
            await _sleep_watching(reader, writer, delay)

        if "fast" in scenarios or path == "/fast":
            return await self._send(writer, 200, JSON_CT, FAST_BODY, close)

        if "error" in scenarios:
            try:
                status = int(headers.get("x-fake-status", "400"))
            except ValueError:
                status = 400
            extra = "privatemode-encrypted: false\r\n"
            if SSE_CT in headers.get("accept", ""):
                events = self.stream_error
                return await self._stream(reader, writer, events, 0.0, close, status=status, extra=extra)
            return await self._send(writer, status, JSON_CT, self.error, close, extra)

        try:
            default_ms = "200" if "hold-stream" in scenarios else "0"
            delay_ms = float(headers.get("x-fake-chunk-delay-ms", default_ms))
        except ValueError:
            delay_ms = 0.0
        delay = delay_ms / 1000.0
        wants_stream = isinstance(data, dict) and data.get("stream") is True
        brk = "break" in scenarios
        force_stream = brk or "hold-stream" in scenarios

        if path == "/v1/chat/completions" or path == "/v1/completions":
            if method != "POST":
                return await self._not_allowed(writer, "POST", close)
            chat = path == "/v1/chat/completions"
            if not (wants_stream or force_stream):
                return await self._send(writer, 200, JSON_CT, self.chat if chat else self.completion, close)
            if "include-usage" in scenarios:
                opts = data.get("stream_options") if isinstance(data, dict) else None
                include = isinstance(opts, dict) and opts.get("include_usage") is True
                if chat:
                    events = self.stream_include_usage if include else self.stream_no_usage
                else:
                    events = self.cstream_include_usage if include else self.cstream_no_usage
            else:
                events = self.stream_privatemode if chat else self.cstream_privatemode
            return await self._stream(reader, writer, events, delay, close, brk=brk)

        if path == "/v1/messages":
            if method != "POST":
                return await self._not_allowed(writer, "POST", close)
            if not (wants_stream or force_stream):
                return await self._send(writer, 200, JSON_CT, self.messages, close)
            return await self._stream(reader, writer, self.stream_messages, delay, close, brk=brk)

        if force_stream:  # any other route: the privatemode chat stream
            return await self._stream(reader, writer, self.stream_privatemode, delay, close, brk=brk)

        if path == "/v1/embeddings":
            if method != "POST":
                return await self._not_allowed(writer, "POST", close)
            return await self._send(writer, 200, JSON_CT, self.embeddings, close)
        if path == "/v1/audio/transcriptions":
            if method != "POST":
                return await self._not_allowed(writer, "POST", close)
            return await self._send(writer, 200, JSON_CT, self.transcription, close)
        if path == "/v1/models":
            if method != "GET":
                return await self._not_allowed(writer, "GET", close)
            return await self._send(writer, 200, JSON_CT, self.models, close)
        if path.startswith("/unstructured/"):
            return await self._send(writer, 200, JSON_CT, UNSTRUCTURED_BODY, close)
        return await self._send(
            writer,
            404,
            "text/plain; charset=utf-8",
            NOT_FOUND_BODY,
            close,
            "x-content-type-options: nosniff\r\n",
        )

    async def _introspect(self, method: str, path: str, writer: asyncio.StreamWriter, close: bool) -> str:
        if path == "/_fake/requests" and method == "GET":
            body = json.dumps(list(self.requests)).encode()
        elif path == "/_fake/stats" and method == "GET":
            body = json.dumps(self.stats()).encode()
        elif path == "/_fake/reset" and method == "POST":
            self.reset()
            body = b'{"ok":true}'
        else:
            return await self._send(writer, 404, "text/plain; charset=utf-8", NOT_FOUND_BODY, close)
        return await self._send(writer, 200, JSON_CT, body, close)

    async def _not_allowed(self, writer: asyncio.StreamWriter, allow: str, close: bool) -> str:
        return await self._send(
            writer, 405, "text/plain; charset=utf-8", b"Method Not Allowed\n", close, f"allow: {allow}\r\n"
        )

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        close: bool,
        extra: str = "",
    ) -> str:
        writer.write(_response(status, content_type, body, extra, close))
        await writer.drain()
        return "complete"

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        events: list[bytes],
        delay: float,
        close: bool,
        status: int = 200,
        extra: str = "",
        brk: bool = False,
    ) -> str:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"content-type: {SSE_CT}\r\ncache-control: no-cache\r\n{extra}"
            "transfer-encoding: chunked\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
        )
        writer.write(head.encode("latin-1"))
        transport = writer.transport
        for i, event in enumerate(events):
            if brk and i == 2:
                await writer.drain()
                transport.abort()
                return "broken"
            if delay:
                await writer.drain()
                await _sleep_watching(reader, writer, delay)
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return "complete"


async def _sleep_watching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Sleep ``delay`` seconds; raise ClientGone soon after the client hangs up."""
    transport = writer.transport
    deadline = time.monotonic() + delay
    while True:
        if transport.is_closing() or reader.at_eof():
            raise ClientGone
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, WATCH_INTERVAL))


# -- server entry points -----------------------------------------------------------------


async def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    samples_dir: Path | str | None = None,
    fake: FakeUpstream | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, FakeUpstream]:
    """Start listening; return the server and its state (for in-process use)."""
    fake = fake or FakeUpstream(samples_dir)
    server = await asyncio.start_server(fake.handle, host, port, limit=HEADER_LIMIT, backlog=1024, ssl=tls)
    return server, fake


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    samples_dir: Path | str | None = None,
    on_ready: Any = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve forever. ``on_ready(host, port)`` is called once it accepts connections."""
    server, _ = await start_server(host, port, samples_dir, tls=tls)
    bound = server.sockets[0].getsockname()
    if on_ready is not None:
        on_ready(bound[0], bound[1])
    async with server:
        await server.serve_forever()


def start_in_thread(
    port: int = 0,
    host: str = "127.0.0.1",
    samples_dir: Path | str | None = None,
    fake: FakeUpstream | None = None,
) -> tuple[int, Any]:
    """Run the fake upstream on its own event loop in a daemon thread.

    Returns ``(port, stop)``; ``stop()`` closes the server and joins the thread. Pass your own
    ``fake = FakeUpstream()`` to look at its state (``fake.requests``, ``fake.stats()``).
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            server, box_fake = await start_server(host, port, samples_dir, fake)
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        box["server"] = server
        box["port"] = server.sockets[0].getsockname()[1]
        box["stop"] = asyncio.Event()
        ready.set()
        await box["stop"].wait()
        server.close()
        # drop open client connections too: wait_closed() waits for them
        box_fake.close_connections()
        await server.wait_closed()

    def run() -> None:
        try:
            loop.run_until_complete(main())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        raise box["error"]

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(box["stop"].set)
            thread.join(timeout=10)

    return box["port"], stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake privatemode-proxy for tests and benchmarks.")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: pick a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="directory of sample responses")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    def ready(host: str, port: int) -> None:
        print(f"fake upstream listening on {host}:{port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.samples, on_ready=ready, tls=tls))


if __name__ == "__main__":
    sys.exit(main())
