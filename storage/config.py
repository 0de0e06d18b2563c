"""Settings from the environment: read once, checked once, passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MAX_BODY_MB = 30  # MAX_BODY_MB; BODY_MEMORY_MB must make room for one such body

# Beside the code, not in the current folder: the gateway, the admin and the CLI find the same
# database wherever they are started from (in the container: /app/data).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


class ConfigError(ValueError):
    """A bad environment value; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    privatemode_api_key: str | None
    admin_password: str | None
    api_keys_file: Path
    api_keys_env: tuple[str, ...]  # the original's API_KEYS: plaintext keys, comma-separated
    tls_cert_file: Path | None
    tls_key_file: Path | None
    force_https: bool
    trust_proxy: bool
    key_rate_limit_requests: int
    key_rate_limit_window: int
    ip_rate_limit_requests: int
    ip_rate_limit_window: int
    global_rate_limit_requests: int
    global_rate_limit_window: int
    upstream_url: str
    upstream_ca_file: Path | None  # a private CA the https upstream's certificate is checked against
    listen_host: str
    listen_port: int
    admin_port: int
    data_dir: Path
    database_url: str
    max_body_mb: int
    upstream_timeout: float
    shutdown_timeout: float
    privatemode_log_file: Path
    # What one client, or all of them together, may make the gateway hold (docs/security.md).
    body_memory_mb: int = 256  # request bodies held to be read (JSON), all requests together
    client_idle_timeout: float = 60.0  # a client connection between requests
    header_timeout: float = 30.0  # for a request head, from the connection's start or its first byte
    max_connections_per_client: int = 64  # per client address; not applied with TRUST_PROXY
    upstream_idle_timeout: float = 120.0  # between two pieces of an upstream answer's body

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * 1024 * 1024

    @property
    def upstream_tls(self) -> bool:
        return self.upstream_url.startswith("https:")

    @property
    def upstream_address(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream_url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _number(env: Mapping[str, str], name: str, default: float, *, kind=int, minimum=1):
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def _global_limit(env: Mapping[str, str], what: str, default: int) -> int:
    # RATE_LIMIT_* is the global limit, as in the original auth proxy; 0.1's GLOBAL_RATE_LIMIT_*
    # stays an alias. Two different values are refused: one of them was meant for something else.
    name, alias = f"RATE_LIMIT_{what}", f"GLOBAL_RATE_LIMIT_{what}"
    value, aliased = _number(env, name, None), _number(env, alias, None)
    if value is not None and aliased is not None and value != aliased:
        raise ConfigError(
            f"{name}: {value} differs from {alias}={aliased}; both name the global limit "
            f"(the per-key default is KEY_RATE_LIMIT_{what}): keep one"
        )
    return value if value is not None else aliased if aliased is not None else default


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = _number(env, name, default)
    if port > 65535:
        raise ConfigError(f"{name}: not a TCP port: {port}")
    return port


def _upstream_url(env: Mapping[str, str]) -> str:
    url = env.get("UPSTREAM_URL", "").strip() or "http://127.0.0.1:8081"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"UPSTREAM_URL: expected http://host:port, got {url!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"UPSTREAM_URL: bad port in {url!r}") from None
    if parts.path not in ("", "/"):
        raise ConfigError(f"UPSTREAM_URL: must not have a path, got {url!r}")
    return url.rstrip("/")


def _readable_file(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    if value and not os.access(value, os.R_OK):
        raise ConfigError(f"{name}: cannot read {value}")
    return Path(value) if value else None


def _tls_files(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    cert = env.get("TLS_CERT_FILE", "").strip()
    key = env.get("TLS_KEY_FILE", "").strip()
    if bool(cert) != bool(key):
        missing = "TLS_KEY_FILE" if cert else "TLS_CERT_FILE"
        raise ConfigError(f"{missing}: must be set together with the other TLS file")
    if not cert:
        return None, None
    for name, value in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)):
        if not os.access(value, os.R_OK):
            raise ConfigError(f"{name}: cannot read {value}")
    return Path(cert), Path(key)


def _resource_limits(env: Mapping[str, str]) -> dict:
    max_body_mb = _number(env, "MAX_BODY_MB", DEFAULT_MAX_BODY_MB)
    body_memory_mb = _number(env, "BODY_MEMORY_MB", max(256, max_body_mb))
    if body_memory_mb < max_body_mb:
        raise ConfigError(
            f"BODY_MEMORY_MB: {body_memory_mb} is less than MAX_BODY_MB ({max_body_mb}): "
            "a body of the largest size allowed would never fit"
        )
    return {
        "body_memory_mb": body_memory_mb,
        "client_idle_timeout": _number(env, "CLIENT_IDLE_TIMEOUT", 60.0, kind=float, minimum=0.1),
        "header_timeout": _number(env, "HEADER_TIMEOUT", 30.0, kind=float, minimum=0.1),
        "max_connections_per_client": _number(env, "MAX_CONNECTIONS_PER_CLIENT", 64),
        "upstream_idle_timeout": _number(env, "UPSTREAM_IDLE_TIMEOUT", 120.0, kind=float, minimum=0.1),
    }


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `env` (default: os.environ); raise ConfigError on a bad value."""
    env = os.environ if env is None else env
    cert, key = _tls_files(env)
    data_dir = Path(env.get("DATA_DIR", "").strip() or DEFAULT_DATA_DIR)
    database_url = env.get("DATABASE_URL", "").strip() or f"sqlite:///{data_dir / 'gateway.db'}"
    if not database_url.startswith("sqlite"):
        raise ConfigError(f"DATABASE_URL: only sqlite:/// URLs are supported, got {database_url!r}")
    global_requests = _global_limit(env, "REQUESTS", 100)
    global_window = _global_limit(env, "WINDOW", 60)
    return Settings(
        privatemode_api_key=env.get("PRIVATEMODE_API_KEY") or None,
        admin_password=env.get("ADMIN_PASSWORD") or None,
        # The original's default path: a migrating team's mounted file is found without the variable.
        api_keys_file=Path(env.get("API_KEYS_FILE", "").strip() or "/app/secrets/api_keys.json"),
        api_keys_env=tuple(k.strip() for k in env.get("API_KEYS", "").split(",") if k.strip()),
        tls_cert_file=cert,
        tls_key_file=key,
        force_https=_bool(env, "FORCE_HTTPS", cert is not None),
        trust_proxy=_bool(env, "TRUST_PROXY", False),
        # Unset, a key is bounded by the global limit alone, as in the original auth proxy.
        key_rate_limit_requests=_number(env, "KEY_RATE_LIMIT_REQUESTS", global_requests),
        key_rate_limit_window=_number(env, "KEY_RATE_LIMIT_WINDOW", global_window),
        ip_rate_limit_requests=_number(env, "IP_RATE_LIMIT_REQUESTS", 1000),
        ip_rate_limit_window=_number(env, "IP_RATE_LIMIT_WINDOW", 60),
        global_rate_limit_requests=global_requests,
        global_rate_limit_window=global_window,
        upstream_url=_upstream_url(env),
        upstream_ca_file=_readable_file(env, "UPSTREAM_CA_FILE"),
        listen_host=env.get("LISTEN_HOST", "").strip() or "0.0.0.0",
        # PORT is the original auth proxy's name for it.
        listen_port=_port(env, "LISTEN_PORT", _port(env, "PORT", 8080)),
        admin_port=_port(env, "ADMIN_PORT", 8082),
        data_dir=data_dir,
        database_url=database_url,
        max_body_mb=_number(env, "MAX_BODY_MB", DEFAULT_MAX_BODY_MB),
        upstream_timeout=_number(env, "UPSTREAM_TIMEOUT", 600.0, kind=float, minimum=0.1),
        shutdown_timeout=_number(env, "SHUTDOWN_TIMEOUT", 30.0, kind=float, minimum=0),
        # entrypoint.sh writes privatemode-proxy's output here; the admin reads attestation from it.
        privatemode_log_file=Path(
            env.get("PRIVATEMODE_LOG_FILE", "").strip() or data_dir / "privatemode-proxy.log"
        ),
        **_resource_limits(env),
    )
