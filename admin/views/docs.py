"""The documentation tab: how the encryption works, client examples, models and prices."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from storage import prices

bp = Blueprint("docs", __name__, url_prefix="/admin")

PYTHON_EXAMPLE = '''from openai import OpenAI

client = OpenAI(
    base_url="{base_url}",
    api_key="pmg_...",  # a key from the API keys tab
)
response = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(response.choices[0].message.content)'''

CURL_EXAMPLE = '''curl {base_url}/chat/completions \\
  -H "Authorization: Bearer $API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\''''

CURL_STREAM_EXAMPLE = '''curl {base_url}/chat/completions \\
  -H "Authorization: Bearer $API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hello!"}}]}}\''''

CURL_AUDIO_EXAMPLE = '''curl {base_url}/audio/transcriptions \\
  -H "Authorization: Bearer $API_KEY" \\
  -F model=whisper-large-v3 \\
  -F file=@meeting.mp3'''


def base_url() -> str:
    """The gateway's OpenAI base URL: the admin is served by the gateway under the same origin."""
    return f"{request.scheme}://{request.host}/v1"


def examples(url: str, model: str) -> dict[str, str]:
    return {
        "python": PYTHON_EXAMPLE.format(base_url=url, model=model),
        "curl": CURL_EXAMPLE.format(base_url=url, model=model),
        "curl_stream": CURL_STREAM_EXAMPLE.format(base_url=url, model=model),
        "curl_audio": CURL_AUDIO_EXAMPLE.format(base_url=url),
    }


@bp.get("/docs")
def index():
    rows = sorted(prices.all_prices().values(), key=lambda p: (p.model == prices.DEFAULT_MODEL, p.model))
    names = [p.model for p in rows if p.model != prices.DEFAULT_MODEL]
    model = "gpt-oss-120b" if "gpt-oss-120b" in names or not names else names[0]
    url = base_url()
    return render_template(
        "docs.html", base_url=url, examples=examples(url, model), prices=rows, model=model,
        default_model=prices.DEFAULT_MODEL,
    )
