# The gateway, its admin and privatemode-proxy in one image (docs/deploy-azure.md runs it).
#
#   docker build -t privatemode-gateway .
#   docker build --build-arg PROXY_VERSION=v1.41.0 -t privatemode-gateway .
#
# Pinned by tag. For a supply chain you can audit, pin by digest too: look the digests up with
# `docker buildx imagetools inspect IMAGE:TAG` and build with
# --build-arg PROXY_IMAGE=ghcr.io/...@sha256:... (and PYTHON_IMAGE likewise).
ARG PROXY_VERSION=v1.40.0
ARG PROXY_IMAGE=ghcr.io/edgelesssys/privatemode/privatemode-proxy:${PROXY_VERSION}
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# privatemode-proxy: a static Go binary (CGO off); /bin/privatemode-proxy is a symlink into
# /nix/store in that image, and COPY (BuildKit: Docker 23+ with buildx) copies its target.
FROM ${PROXY_IMAGE} AS privatemode

# The Python dependencies, in a virtual environment that the runtime stage copies whole.
# Same base image as the runtime: the venv's python links to /usr/local/bin/python3.12.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
# Wheels only (every dependency has one for CPython 3.12 on x86_64 glibc): the build needs no
# compiler, and a dependency that would need one fails here, not halfway on the VM.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --only-binary=:all: --requirement /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="privatemode-gateway" \
      org.opencontainers.image.description="OpenAI-compatible API-key gateway for Privatemode's end-to-end encrypted AI"

# One unprivileged user with a fixed uid, so that host folders can be given to it (chown 10001).
ARG UID=10001
RUN groupadd --system --gid "${UID}" gateway \
    && useradd --system --uid "${UID}" --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway

COPY --from=privatemode /bin/privatemode-proxy /usr/local/bin/privatemode-proxy
# Fails the build if the copy left a dangling symlink or a binary that does not run here.
RUN ["/usr/local/bin/privatemode-proxy", "--version"]
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY storage/ storage/
COPY addons/ addons/
COPY admin/ admin/
COPY scripts/manage_keys.py scripts/manage_keys.py
COPY entrypoint.sh entrypoint.sh
# Bytecode now: the root filesystem is read-only at run time. The data folder belongs to the
# service user; the secrets and certs folders are mount points for read-only host folders.
RUN /opt/venv/bin/python -m compileall -q storage addons admin scripts \
    && chmod 0755 entrypoint.sh \
    && mkdir -p /app/data /app/secrets /app/certs \
    && chown "${UID}:${UID}" /app/data \
    && chmod 0700 /app/data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    DATA_DIR=/app/data \
    LISTEN_HOST=0.0.0.0 \
    LISTEN_PORT=8080

USER ${UID}:${UID}
VOLUME ["/app/data"]
# Only the gateway's port. privatemode-proxy (8081, no authentication, no bind-address flag)
# and the admin (127.0.0.1:8082) are never published; see docs/security.md.
EXPOSE 8080
# /health covers the upstream (privatemode-proxy) and the database, not just the process.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["/app/entrypoint.sh", "healthcheck"]
# The gateway drains within SHUTDOWN_TIMEOUT (30 s): run with `--stop-timeout 60`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/entrypoint.sh"]
