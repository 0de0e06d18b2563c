"""Which of our routes a request path is, decided once per request from the path alone."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote


class Kind(enum.Enum):
    HEALTH = "health"
    ADMIN = "admin"
    API = "api"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Route:
    kind: Kind
    endpoint: str = ""  # what a usage row names: the API path, or "/unstructured"
    json_body: bool = False  # bodies we read for `model` and `stream`
    stream_upload: bool = False  # bodies that pass through without being held in memory
    usage_in_stream: bool = False  # streamed chat or completion: usage can be asked for
    names_model: bool = False  # the request names a model: a key's model list applies to it
    model_list: bool = False  # GET /v1/models, or /v1/models/{id}: answered with the key's models


API_ROUTES = {
    "/v1/chat/completions": Route(
        Kind.API, "/v1/chat/completions", json_body=True, usage_in_stream=True, names_model=True
    ),
    "/v1/completions": Route(
        Kind.API, "/v1/completions", json_body=True, usage_in_stream=True, names_model=True
    ),
    "/v1/embeddings": Route(Kind.API, "/v1/embeddings", json_body=True, names_model=True),
    "/v1/messages": Route(Kind.API, "/v1/messages", json_body=True, names_model=True),
    "/v1/audio/transcriptions": Route(
        Kind.API, "/v1/audio/transcriptions", stream_upload=True, names_model=True
    ),
    "/v1/models": Route(Kind.API, "/v1/models", model_list=True),
}
MODELS_PREFIX = "/v1/models/"
# One model: the upstream's list is asked for and the entry picked from it (addons/models.py).
ONE_MODEL = Route(Kind.API, "/v1/models", model_list=True)
UNSTRUCTURED = Route(Kind.API, "/unstructured", stream_upload=True)
HEALTH = Route(Kind.HEALTH, "/health")
ADMIN = Route(Kind.ADMIN, "/admin")
UNKNOWN = Route(Kind.UNKNOWN)


def classify(path: str) -> Route:
    """`path` is the request target without the query string."""
    if _has_dot_segments(path):
        # `/admin/../v1/...` (or `%252e%252e`) must not mean one thing here and another behind us.
        return UNKNOWN
    if path in API_ROUTES:
        return API_ROUTES[path]
    if path.startswith("/unstructured/"):
        return UNSTRUCTURED
    if path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
        return ONE_MODEL
    if path == "/health":
        return HEALTH
    if path == "/admin" or path.startswith("/admin/"):
        return ADMIN
    return UNKNOWN


def _has_dot_segments(path: str) -> bool:
    if "." not in path and "%" not in path and "\\" not in path:
        return False  # the usual case, decided without decoding
    decoded = unquote(path)
    # A percent sign left after one decoding (%252e) is a second encoding: whoever decodes again
    # behind us would see a path we never checked.
    return any(segment in (".", "..") for segment in decoded.split("/")) or "\\" in decoded or "%" in decoded
