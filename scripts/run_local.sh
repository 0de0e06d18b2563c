#!/usr/bin/env bash
# `make run`: the whole service on this machine, on its embedded defaults (SQLite in ./data,
# loopback only). Without UPSTREAM_URL it starts the fake upstream of the tests in place of
# privatemode-proxy, so the demo needs no Privatemode key; with it, it uses that server.
#
# Ports: LISTEN_PORT (8080, the gateway), ADMIN_PORT (8082), DEMO_UPSTREAM_PORT (9081).
# When the demo upstream exits, at start or later, everything stops with a non-zero status:
# a gateway left running without it would answer every request with a 502.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATA_DIR=${DATA_DIR:-./data}
export LISTEN_HOST=${LISTEN_HOST:-127.0.0.1}
export LISTEN_PORT=${LISTEN_PORT:-8080}
export PYTHON=.venv/bin/python
mkdir -p "$DATA_DIR"

fake_pid=
gateway_pid=
# shellcheck disable=SC2329  # run by the EXIT trap, which shellcheck misses before an `exit`
cleanup() {
  if [[ -n $fake_pid ]]; then kill "$fake_pid" 2>/dev/null || true; fi
  if [[ -n $gateway_pid ]]; then kill -TERM "$gateway_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

if [[ -z ${UPSTREAM_URL:-} ]]; then
  port=${DEMO_UPSTREAM_PORT:-9081}
  fake_log=${DATA_DIR#./}/fake-upstream.log
  "$PYTHON" tests/fake_upstream.py --port "$port" >"$fake_log" 2>&1 &
  fake_pid=$!
  # Its own "listening" line, not a connection test: another process holding the port would
  # answer that while the demo upstream itself failed to bind.
  deadline=$((SECONDS + 30))
  until grep -q '^fake upstream listening on' "$fake_log"; do
    if ! kill -0 "$fake_pid" 2>/dev/null; then
      status=0
      wait "$fake_pid" || status=$?
      fake_pid=
      echo "run: the demo upstream exited (status $status); see $fake_log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "run: the demo upstream does not listen on port $port after 30 s; see $fake_log" >&2
      exit 1
    fi
    sleep 0.1
  done
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

# entrypoint.sh runs in the background so that this shell can wait for it and the demo
# upstream at once. A background job of a script ignores SIGINT, so Ctrl-C (or a SIGTERM) is
# passed on to it as the SIGTERM it stops on.
stopping=0
failed=0
on_signal() {
  stopping=1
  kill -TERM "$gateway_pid" 2>/dev/null || true
}
trap on_signal INT TERM
bash entrypoint.sh &
gateway_pid=$!
if ((stopping)); then on_signal; fi   # a signal came before the pid was known

while true; do
  done_pid=
  status=0
  wait -n -p done_pid "$gateway_pid" ${fake_pid:+"$fake_pid"} || status=$?
  if [[ ${done_pid:-} == "$gateway_pid" ]]; then
    gateway_pid=
    break   # entrypoint.sh said why on stderr
  elif [[ -n ${done_pid:-} ]]; then
    fake_pid=
    # Ignored when a stop was asked for: a signal to the process group reaches it too.
    if ((!stopping)); then
      echo "run: the demo upstream exited (status $status); see $fake_log" >&2
      failed=1
      kill -TERM "$gateway_pid" 2>/dev/null || true
    fi
  fi
  # No pid: a signal interrupted the wait; wait again for entrypoint.sh to stop.
done
if ((failed && status == 0)); then
  status=1
fi
exit "$status"
