#!/usr/bin/env bash
# `make run`: the whole service on this machine, on its embedded defaults (SQLite in ./data,
# loopback only). Without UPSTREAM_URL it starts the fake upstream of the tests in place of
# privatemode-proxy, so the demo needs no Privatemode key; with it, it uses that server.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATA_DIR=${DATA_DIR:-./data}
export LISTEN_HOST=${LISTEN_HOST:-127.0.0.1}
export LISTEN_PORT=${LISTEN_PORT:-8080}
export PYTHON=.venv/bin/python
mkdir -p "$DATA_DIR"

fake_pid=
if [[ -z ${UPSTREAM_URL:-} ]]; then
  port=${DEMO_UPSTREAM_PORT:-9081}
  "$PYTHON" tests/fake_upstream.py --port "$port" >"$DATA_DIR/fake-upstream.log" 2>&1 &
  fake_pid=$!
  trap 'kill "$fake_pid" 2>/dev/null || true' EXIT
  export UPSTREAM_URL="http://127.0.0.1:$port"
  echo "run: demo upstream (replays Privatemode's response shapes) on $UPSTREAM_URL"
fi

if [[ -z ${ADMIN_PASSWORD:-} && -z ${ADMIN_PASSWORD_FILE:-} ]]; then
  # A password for this machine only, kept (0600) for the next `make run`.
  password_file="$DATA_DIR/demo-admin-password"
  [[ -s $password_file ]] || (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))' >"$password_file")
  export ADMIN_PASSWORD_FILE=$password_file
  echo "run: admin password (demo): $(cat "$password_file")"
fi

cat <<INFO
run: gateway   http://$LISTEN_HOST:$LISTEN_PORT/v1   (health: http://$LISTEN_HOST:$LISTEN_PORT/health)
run: admin     http://$LISTEN_HOST:$LISTEN_PORT/admin
run: a key     $PYTHON scripts/manage_keys.py create --name demo
run: Ctrl-C stops everything.
INFO
status=0
bash entrypoint.sh || status=$?
exit "$status"
