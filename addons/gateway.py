"""The gateway addon: routes, API keys, rate limits and usage metering, failing closed.

Production runs it through `python -m addons`; for debugging it also loads with
`mitmdump -s addons/gateway.py` or `mitmweb -s addons/gateway.py` (see the README).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from mitmproxy import ctx, exceptions, http

# Loaded as a script, only addons/ is on sys.path; our packages live one folder up.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons import admin_route, engine, errors, models, routes  # noqa: E402
from addons.bodies import RETRY_AFTER_SECONDS, BodyBudget, StreamedUpload, held_size  # noqa: E402
from addons.health import Health, upstream_tls_context  # noqa: E402
from addons.limits import Limiter, Verdict  # noqa: E402
from addons.live import KeyEntry, LiveData, Snapshot  # noqa: E402
from addons.metering import META, RequestInfo, finished  # noqa: E402
from addons.quota import KEY, Quota  # noqa: E402
from addons.sse import SseUsageTap  # noqa: E402
from addons.timeouts import UpstreamTimeouts  # noqa: E402
from addons.tls import CHECK_SECONDS, HSTS, CertificateBundle, CertificateError  # noqa: E402
from addons.usage import json_object  # noqa: E402
from addons.writer import UsageWriter  # noqa: E402
from storage import config, db, keys_file  # noqa: E402
from storage.settings import Limits, load_limits  # noqa: E402

log = logging.getLogger("gateway")
# What an OpenAI or Anthropic API call needs; everything else a client sends (cookies, client
# addresses, tracing and SDK telemetry headers) stays here: privatemode-proxy passes headers on
# to Privatemode. Compression is not asked for, so usage can be read from what comes back.
# `Expect: 100-continue` is kept for mitmproxy, which answers it once the request is admitted and
# then removes it: dropped here, curl waited a second before sending any body over 1 MB.
# `Connection` too: mitmproxy closes the client's connection after the answer when the request
# says `close`, and reads that from this same request (the upstream hop closes too: harmless).
FORWARDED_HEADERS = frozenset({b"content-type", b"content-length", b"content-encoding", b"transfer-encoding",
                               b"accept", b"expect", b"connection"})
FORWARDED_PREFIXES = (b"openai-", b"anthropic-")


class Gateway:
    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings
        self.limiter = Limiter()
        self.quota = Quota()  # budgets and token limits
        self.in_flight = 0
        self.live: LiveData | None = None
        self.writer: UsageWriter | None = None
        self.health: Health | None = None
        self.timeouts: UpstreamTimeouts | None = None
        self.bodies: BodyBudget | None = None
        self.upstream_host = ""
        self.tls: CertificateBundle | None = None
        self._first_bundle: Path | None = None
        self._tls_task: asyncio.Task | None = None
        self._admin_address = ""  # as mitmproxy's connect errors name it: see load()

    # -- lifecycle -------------------------------------------------------------------------

    def load(self, loader) -> None:
        s = self.settings = self.settings or config.load()
        db.open_database(s.database_url)
        defaults = Limits.from_settings(s)
        self.live = LiveData(defaults, s.api_keys_file, s.api_keys_env)
        try:
            self.live.load_keys_file()
        except keys_file.KeysFileError as e:
            # OptionsError is what mitmproxy lets through its loader: start-up stops on it.
            raise exceptions.OptionsError(f"API_KEYS_FILE: {e}") from None
        log.info("rate limits in force: %s", load_limits(defaults).describe())
        self.quota.load()
        self.writer = UsageWriter(lambda: self.live.snapshot.prices)
        self.timeouts = UpstreamTimeouts(s.upstream_timeout, s.upstream_idle_timeout)
        self.bodies = BodyBudget(s.body_memory_mb * 1024 * 1024)
        self.upstream_host = "{}:{}".format(*s.upstream_address)
        self.health = Health(s.upstream_address, upstream_tls_context(s) if s.upstream_tls else None)
        # mitmproxy's connect errors name the address as a Python tuple: that is how an
        # unreachable admin is told from an unreachable upstream.
        admin_address = self._admin_address = f"'127.0.0.1', {s.admin_port})"
        engine.install(
            lambda status, message: errors.engine_error(status, message, admin_address=admin_address)
        )
        if s.tls_enabled:
            self.tls = CertificateBundle(s.tls_cert_file, s.tls_key_file, s.data_dir / ".tls")
            try:
                self._first_bundle = self.tls.prepare()
            except CertificateError as e:
                raise exceptions.OptionsError(f"TLS_CERT_FILE, TLS_KEY_FILE: {e}") from None

    async def running(self) -> None:
        self.live.start()
        self.writer.start()
        if not self.health.checked_at:
            await self.health.probe()
        self.health.start()
        self.timeouts.start()
        if self.tls:
            ctx.options.update(certs=self.tls.option_value(self._first_bundle))
            self.tls.served(self._first_bundle)
            self._tls_task = asyncio.get_running_loop().create_task(self._watch_certificate())

    def done(self) -> None:
        """Flush every queued usage row: a graceful stop loses none."""
        for task in (self.health, self.timeouts):
            if task:
                task.stop()
        if self._tls_task:
            self._tls_task.cancel()
        if self.live:
            self.live.stop()
        if self.writer:
            self.writer.close()

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                self._reload_certificate()
            except Exception:
                log.exception("reloading the TLS certificate failed; keeping the current one")

    def _reload_certificate(self) -> None:
        """Serve a renewed pair once it is whole and valid; until then the current one stays."""
        if not self.tls.changed():
            return
        try:
            path = self.tls.prepare()
        except FileNotFoundError:
            return  # between the two renames of a renewal: look again at the next check
        except CertificateError as e:
            log.warning("the new TLS certificate is not served, the current one stays: %s", e)
            return
        try:
            ctx.options.update(certs=self.tls.option_value(path))
        except exceptions.OptionsError as e:  # mitmproxy rolled back to the bundle still on disk
            path.unlink(missing_ok=True)
            log.error("mitmproxy refused the new TLS certificate, the current one stays: %s", e)
            return
        self.tls.served(path)
        log.info("TLS certificate reloaded")

    # -- hooks -----------------------------------------------------------------------------

    def server_connect(self, data) -> None:
        # mitmproxy would ask an https upstream for the name our client asked us for (the
        # gateway's own), and check the upstream's certificate against it: ask for the upstream.
        if self.settings.upstream_tls and data.server.address == self.settings.upstream_address:
            data.server.sni = self.settings.upstream_address[0]

    def requestheaders(self, flow: http.HTTPFlow):
        try:
            recheck = self._admit(flow)
        except Exception:
            _refuse_after_failure(flow)
            return None
        # Only a key about to be refused waits: mitmproxy awaits a hook that returns a coroutine.
        return recheck

    async def _admit_after_fresh_look(self, flow: http.HTTPFlow, digest: str, ip_verdict: Verdict) -> None:
        try:
            snapshot = await self.live.fresh_snapshot()
            self._admit_key(flow, snapshot, snapshot.keys_by_hash.get(digest), ip_verdict)
        except Exception:
            _refuse_after_failure(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        info: RequestInfo | None = flow.metadata.get(META)
        if info is None or not (info.admitted or info.route.kind is routes.Kind.ADMIN):
            flow.response = errors.internal_error()  # fail closed: never forward an unchecked request
            return
        try:
            self._prepare_upstream(flow, info)
        except Exception:
            log.exception("preparing the request failed; refusing it")
            flow.response = errors.internal_error()
        info.forwarded = flow.response is None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _add_hsts(flow)
        info: RequestInfo | None = flow.metadata.get(META)
        if info is None:
            return
        self.timeouts.forget(flow)
        if self.bodies.held and flow in self.bodies:
            # The body has gone upstream: its room, and the gateway's copy, are let go now
            # rather than when the answer ends, which for a stream may be minutes away.
            self.bodies.release(flow)
            flow.request.data.content = None
        response = flow.response
        if info.route.kind is routes.Kind.ADMIN:
            response.stream = True
            return
        if info.verdict and response.status_code < 400:
            # Ours replace the upstream's: they describe the client's own limits. Raw fields: this
            # runs on every response, and mitmproxy's header methods cost several times more.
            ours = tuple((k.encode(), v.encode()) for k, v in info.verdict.headers().items())
            kept = tuple(f for f in response.headers.fields if not f[0].lower().startswith(b"x-ratelimit-"))
            response.headers.fields = kept + ours
        if info.key_id:
            self.quota.add_token_headers(flow, self.live.snapshot)
        if "text/event-stream" in response.headers.get("content-type", ""):
            info.tap = SseUsageTap(strip_usage_only_chunk=info.strip_usage_chunk)
            response.stream = info.tap
        if response.raw_content is None:  # the upstream's body is to come (not one of our answers)
            self.timeouts.answer_started(flow, info.tap)

    def response(self, flow: http.HTTPFlow) -> None:
        _add_hsts(flow)  # answers the gateway makes itself pass here only
        info: RequestInfo | None = flow.metadata.get(META)
        if info is None or info.finished:
            return
        if info.route.model_list:
            models.shape_answer(flow, flow.metadata.get(KEY))
        status, body = flow.response.status_code, None
        if info.tap is not None:
            usage, model = info.tap.usage, info.tap.model or info.model
            complete = info.tap.complete or status >= 400
        else:
            usage, model, complete = None, info.model, True
            if info.admitted and not flow.response.stream:
                body = flow.response.content  # its usage is read on the writer thread
        self._finish(flow, info, status, usage, model, complete, body)

    def error(self, flow: http.HTTPFlow) -> None:
        info: RequestInfo | None = flow.metadata.get(META)
        if info is None or info.finished:
            return
        self.timeouts.forget(flow)
        self.bodies.release(flow)
        if flow.response:
            status = flow.response.status_code
        else:  # mitmproxy answered by itself: the row says what the client was told
            message = flow.error.msg if flow.error else ""
            hint = 413 if "body_size_limit" in message else 502
            status, _ = errors.engine_error(hint, message, admin_address=self._admin_address)
        usage = info.tap.usage if info.tap else None
        model = (info.tap.model if info.tap else None) or info.model
        self._finish(flow, info, status, usage, model, complete=False)

    # -- admission -------------------------------------------------------------------------

    def _admit(self, flow: http.HTTPFlow):
        """Decide on the request's headers; returns a coroutine when a key needs a fresh look."""
        s, snapshot = self.settings, self.live.snapshot
        request = flow.request
        path = request.path.split("?", 1)[0]
        info = RequestInfo(routes.classify(path), self._client_ip(flow))
        flow.metadata[META] = info
        self.in_flight += 1
        kind = info.route.kind

        if kind is routes.Kind.HEALTH:
            status, body = self.health.report(self.writer.status())
            flow.response = errors.json_response(status, body)
            return
        if s.force_https and not self._client_used_https(flow):
            flow.response = errors.error_response(
                403, "HTTPS required.", "invalid_request_error", "https_required"
            )
            return
        ip_verdict = self.limiter.check_ip(info.client_ip, snapshot.ip_rule)
        if not ip_verdict.allowed:
            flow.response = _too_many(ip_verdict)
            return
        if kind is routes.Kind.ADMIN:
            admin_route.route(flow, info.client_ip, self._client_used_https(flow), self.settings)
            return
        if kind is routes.Kind.UNKNOWN:
            flow.response = errors.not_found(path)
            return

        presented = _take_key(request)
        if not presented:
            flow.response = errors.invalid_api_key("Missing API key.")
            return None
        digest = hashlib.sha256(presented.encode()).hexdigest()
        entry = snapshot.keys_by_hash.get(digest)
        if _refusal(entry) is None:
            self._admit_key(flow, snapshot, entry, ip_verdict)
            return None
        # About to refuse: decide on the database as it is now, not as it was at the last poll.
        return self._admit_after_fresh_look(flow, digest, ip_verdict)

    def _admit_key(self, flow: http.HTTPFlow, snapshot: Snapshot, entry: KeyEntry | None, ip_verdict) -> None:
        info: RequestInfo = flow.metadata[META]
        request = flow.request
        s = self.settings
        refusal = _refusal(entry)
        if refusal:
            flow.response = errors.invalid_api_key(refusal)
            return
        info.key_id = entry.key_id
        if (refused := self.quota.admit(flow, entry, snapshot)) is not None:
            flow.response = refused  # a budget or token limit used up: before the request limits
            return

        verdict = self.limiter.check_key(entry.key_id, entry.rule, snapshot.global_rule, ip_verdict)
        if not verdict.allowed:
            flow.response = _too_many(verdict)
            return
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > s.max_body_bytes:
            flow.response = errors.error_response(
                413, f"Request body exceeds {s.max_body_mb} MB.", "invalid_request_error", "request_too_large"
            )
            return
        # Uploads pass through, unless their model must be read (a key's model list).
        streamed = info.route.stream_upload and not models.must_hold(entry, info.route)
        held = 0 if streamed else held_size(request, s.max_body_bytes)
        encoded = request.headers.get("content-encoding", "identity") != "identity"
        if held and info.route.json_body and encoded:
            # Decompressing it to read it would be unbounded: 30 MB of gzip can inflate to 30 GB.
            flow.response = errors.error_response(
                415, "Compressed request bodies are not supported here: send it without Content-Encoding.",
                "invalid_request_error", "unsupported_content_encoding",
            )
            return
        if held and not self.bodies.fits(held):
            flow.response = errors.error_response(
                503, f"The gateway is holding all the request bodies it can (BODY_MEMORY_MB); retry in "
                f"{RETRY_AFTER_SECONDS} s.", "server_error", "server_overloaded",
                {"retry-after": str(RETRY_AFTER_SECONDS)},
            )
            return
        if held:
            self.bodies.take(flow, held)
        info.verdict = verdict
        info.admitted = True
        request.headers.fields = tuple(field for field in request.headers.fields if _forwarded(field[0]))
        # Origin form upstream, whatever the client wrote (an absolute-form request line, or
        # HTTP/2's :authority): the upstream sees our address, never one a client chose.
        request.authority = ""
        request.host_header = self.upstream_host  # the client's Host was kept for the admin's sake
        if streamed:
            # Never held, whatever its size: counted as it passes, and cut at MAX_BODY_MB when its
            # size was not declared (one declared larger got its 413 above).
            request.stream = StreamedUpload(info, s.max_body_bytes)
            info.forwarded = True  # mitmproxy sends a streamed request's headers upstream now
            self.timeouts.watch(flow)

    def _client_ip(self, flow: http.HTTPFlow) -> str:
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        if self.settings.trust_proxy:
            # The address our trusted proxy saw is the last one it appended.
            forwarded = [
                a.strip() for a in flow.request.headers.get("x-forwarded-for", "").split(",") if a.strip()
            ]
            if forwarded:
                return forwarded[-1]
        return peer

    def _client_used_https(self, flow: http.HTTPFlow) -> bool:
        if flow.client_conn.tls_established:
            return True
        if not self.settings.trust_proxy:
            return False
        # TLS ended at our trusted proxy: the scheme it saw is the last one it set or appended.
        forwarded = flow.request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        return forwarded == "https"

    # -- forwarding ------------------------------------------------------------------------

    def _prepare_upstream(self, flow: http.HTTPFlow, info: RequestInfo) -> None:
        if info.route.kind is routes.Kind.ADMIN:
            return
        request = flow.request
        self.bodies.settle(flow, len(request.raw_content or b""))  # arrived: its size, not the largest
        if info.route.stream_upload:
            info.count_upload(request.raw_content or b"")  # a chunked upload, held: its size and model
        else:
            info.request_bytes = len(request.raw_content or b"")
        if info.route.json_body and request.method == "POST":
            body = json_object(request.content)
            if body is None:
                flow.response = errors.error_response(
                    400,
                    "The request body is not a valid JSON object.",
                    "invalid_request_error",
                    "invalid_json",
                )
                return
            model = body.get("model")
            info.model = model if isinstance(model, str) else None
            if info.route.usage_in_stream and body.get("stream") is True:
                options = body.get("stream_options")
                if not (isinstance(options, dict) and options.get("include_usage") is True):
                    # Ask for usage upstream; the usage-only chunk is removed on the way back.
                    body["stream_options"] = {
                        **(options if isinstance(options, dict) else {}),
                        "include_usage": True,
                    }
                    request.content = json.dumps(body).encode()
                    info.strip_usage_chunk = True
        if refused := self._check_model(flow, info):
            flow.response = refused
            return
        self.timeouts.watch(flow)

    def _check_model(self, flow: http.HTTPFlow, info: RequestInfo) -> http.Response | None:
        """The key's model list, before anything goes upstream."""
        if info.route is routes.ONE_MODEL:
            return models.prepare_lookup(flow)
        return models.refusal(flow.metadata.get(KEY), info.route, info.model)

    # -- the end of every request ----------------------------------------------------------

    def _finish(self, flow, info: RequestInfo, status, usage, model, complete: bool, body=None) -> None:
        info.finished = True
        self.in_flight -= 1
        metered = bool(info.key_id) and info.route.kind is routes.Kind.API
        done = finished(info, flow.request.method, status, usage, model, complete, metered, body)
        if metered:  # spend and tokens count now, before the client sees the end of the answer
            done = self.quota.charge(done, flow.metadata.get(KEY), self.live.snapshot)
        self.writer.put(done)


def _add_hsts(flow: http.HTTPFlow) -> None:
    if flow.client_conn.tls_established:
        flow.response.headers["strict-transport-security"] = HSTS


def _forwarded(name: bytes) -> bool:
    lowered = name.lower()
    return lowered in FORWARDED_HEADERS or lowered.startswith(FORWARDED_PREFIXES)


def _refusal(entry: KeyEntry | None) -> str | None:
    """Why a key is refused, or None if it may be used."""
    if entry is None:
        return "Invalid API key."
    if not entry.enabled:
        return "This API key has been revoked."
    if entry.expires_at is not None and entry.expires_at <= datetime.now(UTC):
        return "This API key has expired."
    return None


def _refuse_after_failure(flow: http.HTTPFlow) -> None:
    log.exception("admission failed; refusing the request")  # fail closed
    flow.request.stream = False
    flow.response = errors.internal_error()


def _take_key(request: http.Request) -> str | None:
    """The presented key, removed from the request in every case: it never goes upstream."""
    kept, authorization, api_key = [], b"", b""
    for name, value in request.headers.fields:  # one pass over the raw headers
        lowered = name.lower()
        if lowered == b"authorization":
            authorization = value
        elif lowered == b"x-api-key":
            api_key = value
        else:
            kept.append((name, value))
    if authorization or api_key:
        request.headers.fields = tuple(kept)
    scheme, _, token = authorization.partition(b" ")
    presented = token.strip() if scheme.lower() == b"bearer" else api_key.strip()
    return presented.decode("latin-1") or None


def _too_many(verdict: Verdict) -> http.Response:
    names = {"ip": "per-IP", "key": "per-key", "global": "global"}
    headers = verdict.headers()
    return errors.error_response(
        429,
        f"Rate limit exceeded ({names[verdict.scope]} limit). Retry after {headers['retry-after']} s.",
        "requests",
        "rate_limit_exceeded",
        headers,
    )


addons = [Gateway()]
