"""OpenAI-shaped error bodies and responses for everything the gateway answers itself."""

from __future__ import annotations

import json

from mitmproxy import http

JSON_HEADERS = {"content-type": "application/json"}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


UPSTREAM_TIMEOUT_BODY = error_body("The upstream did not answer in time.", "server_error", "upstream_timeout")


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> http.Response:
    return http.Response.make(status, error_body(message, type_, code), {**JSON_HEADERS, **(headers or {})})


def json_response(status: int, payload: dict) -> http.Response:
    return http.Response.make(status, json.dumps(payload).encode(), JSON_HEADERS)


def invalid_api_key(reason: str) -> http.Response:
    return error_response(401, reason, "invalid_request_error", "invalid_api_key")


def not_found(path: str) -> http.Response:
    return error_response(404, f"Unknown path: {path[:200]}", "invalid_request_error", "not_found")


def internal_error() -> http.Response:
    # Never the exception text: it may quote headers or content.
    return error_response(500, "The gateway failed to process the request.", "server_error", "internal_error")


def engine_error(status: int, message: str, *, admin_address: str | None = None) -> tuple[int, bytes]:
    """Translate an error mitmproxy makes on its own (bad HTTP, body too large, connect failed).

    mitmproxy only hands over a status and its message, which can hold raw errno text and
    addresses: we keep none of it, only which of our own errors it was.
    """
    if status == 413:
        return 413, error_body("Request body too large.", "invalid_request_error", "request_too_large")
    if status == 400:
        return 400, error_body("Malformed HTTP request.", "invalid_request_error", "bad_request")
    if status == 431:
        return 431, error_body(
            "Request head too large (at most 64 KB of request line and headers).",
            "invalid_request_error",
            "request_headers_too_large",
        )
    if admin_address and admin_address in message:
        return 503, error_body("The admin panel is not running.", "server_error", "admin_unavailable")
    if "timed out" in message.lower():
        return 504, UPSTREAM_TIMEOUT_BODY
    return 502, error_body("The upstream service is unreachable.", "server_error", "upstream_unavailable")


def insufficient_quota(message: str) -> http.Response:
    """A budget used up: OpenAI's answer for an exhausted quota. `x-should-retry: false` tells the
    OpenAI and Anthropic SDKs not to retry a 429 that lasts until the period ends."""
    no_retry = {"x-should-retry": "false"}
    return error_response(429, message, "insufficient_quota", "insufficient_quota", no_retry)


def tokens_exceeded(message: str, headers: dict[str, str]) -> http.Response:
    """A token limit reached: OpenAI's answer, with `retry-after` and the token headers."""
    return error_response(429, message, "tokens", "rate_limit_exceeded", headers)


def model_not_allowed(message: str) -> http.Response:
    return http.Response.make(
        403,
        error_body(message, "invalid_request_error", "model_not_allowed", param="model"),
        JSON_HEADERS,
    )


def model_not_found(model: str) -> bytes:
    """OpenAI's body for GET /v1/models/{id} of a model that it does not list."""
    return error_body(
        f"The model '{model}' does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        param="model",
    )
