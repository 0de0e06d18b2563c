"""Model access per key: the allow-list, checked before the upstream; and the model list, answered
with the key's models only, so that a client's model picker shows what the key may use.

A key's list holds exact names (storage/keys.py); no list: every model. The check needs the
request's model: a JSON body's `model` (chat, completions, embeddings, messages), or a
transcription's multipart `model` field, which addons/metering.py finds in the upload's first
64 KB. A transcription is otherwise streamed to the upstream as it arrives, its headers before
any of its body (mitmproxy offers no way to hold only the head), so for a key with a list it is
held whole instead, like a JSON body: at most MAX_BODY_MB, and counted in BODY_MEMORY_MB
(addons/bodies.py). The upstream then sees nothing of a request for another model. A request
that names no model is refused too: the upstream would pick one.

GET /v1/models/{id} is asked of the upstream as GET /v1/models, and the entry picked from the
list: not every OpenAI-compatible server has the route, and the list is what a key's models are
picked from anyway.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from mitmproxy import http

from addons import errors, routes
from addons.live import KeyEntry
from addons.usage import json_object
from storage import untrusted

LOOKUP = "gateway.model-lookup"  # flow.metadata: the {id} of GET /v1/models/{id}


def must_hold(entry: KeyEntry, route: routes.Route) -> bool:
    """Whether an upload must be held whole until its model is known, instead of streamed."""
    return entry.models is not None and route.names_model


def refusal(entry: KeyEntry | None, route: routes.Route, model: str | None) -> http.Response | None:
    """The 403 for a model the key may not use; None when it may."""
    if entry is None or entry.models is None or not route.names_model or model in entry.models:
        return None
    if not model:
        return errors.model_not_allowed(
            "This API key may use only certain models, and the request names none: "
            "set 'model' to one that GET /v1/models lists."
        )
    shown = model[: untrusted.MAX_MODEL_CHARS]
    return errors.model_not_allowed(
        f"The model '{shown}' is not allowed for this API key; GET /v1/models lists the ones it may use."
    )


def prepare_lookup(flow: http.HTTPFlow) -> http.Response | None:
    """GET /v1/models/{id} goes upstream as GET /v1/models (the query string kept); other methods
    on it are not ours to forward."""
    request = flow.request
    path, mark, query = request.path.partition("?")
    if request.method != "GET":
        return errors.not_found(path)
    # Decoded once, as the SDKs encode it (openai/gpt-oss-120b comes as openai%2Fgpt-oss-120b);
    # routes.classify refused anything encoded twice.
    flow.metadata[LOOKUP] = unquote(path[len(routes.MODELS_PREFIX) :])
    request.path = "/v1/models" + mark + query
    return None


def shape_answer(flow: http.HTTPFlow, entry: KeyEntry | None) -> None:
    """The upstream's model list, cut to the key's models; for /v1/models/{id}, the one entry or
    OpenAI's 404. Any other answer (an upstream error) passes as it came."""
    lookup = flow.metadata.get(LOOKUP)
    allowed = entry.models if entry is not None else None
    response = flow.response
    if (lookup is None and allowed is None) or response.status_code != 200:
        return
    listing = json_object(response.content)
    data = listing.get("data") if listing is not None else None
    # An answer that is not a list shows nothing rather than models the key may not use.
    kept = [model for model in (data if isinstance(data, list) else ()) if _listed(model, allowed)]
    if lookup is None:
        answer = {**(listing or {}), "object": "list", "data": kept}
    else:
        answer = next((model for model in kept if model.get("id") == lookup), None)
        if answer is None:
            response.status_code, response.reason = 404, "Not Found"
            response.headers["content-type"] = "application/json"
            response.content = errors.model_not_found(lookup[: untrusted.MAX_MODEL_CHARS])
            return
    response.headers["content-type"] = "application/json"
    response.content = json.dumps(answer).encode()


def _listed(model, allowed: frozenset[str] | None) -> bool:
    """An entry of the upstream's list that the key may see (an id that is a string: hashable)."""
    if not (isinstance(model, dict) and isinstance(model.get("id"), str)):
        return False
    return allowed is None or model["id"] in allowed
