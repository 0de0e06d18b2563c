#!/usr/bin/env bash
# Start privatemode-proxy, the admin and the gateway; stop all of them when one stops.
#
#   entrypoint.sh              check the settings, start the three processes and watch them
#   entrypoint.sh healthcheck  exit 0 when the gateway's /health answers 200 (Docker HEALTHCHECK)
#
# privatemode-proxy runs only when UPSTREAM_URL is unset or names its own port on loopback
# (http://127.0.0.1:PRIVATEMODE_PORT or http://localhost:PRIVATEMODE_PORT, port 8081 unless
# PRIVATEMODE_PORT says otherwise). Any other UPSTREAM_URL (another OpenAI-compatible server,
# the fake upstream of the tests) runs the admin and the gateway alone.
#
# Read here, besides the gateway's own settings (storage/config.py):
#   PRIVATEMODE_API_KEY / PRIVATEMODE_API_KEY_FILE  the Privatemode key, or a file holding it
#   ADMIN_PASSWORD / ADMIN_PASSWORD_FILE            the admin's password (>= 12 characters)
#   PRIVATEMODE_PORT        privatemode-proxy's port (8081)
#   PRIVATEMODE_KEY_DIR     a tmpfs folder for the key file (/dev/shm, else $TMPDIR or /tmp)
#   PRIVATEMODE_START_TIMEOUT  seconds to wait for privatemode-proxy's port (60)
#   PRIVATEMODE_LOG_MAX_MB  privatemode-proxy's log is moved to *.1 beyond this size (10)
#   PYTHON                  the Python that runs the admin and the gateway (python3)
set -uo pipefail
umask 077

PYTHON=${PYTHON:-python3}
APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Relative paths (DATA_DIR=./data, the default) mean the same to every process started here.
cd "$APP_DIR" || exit 2

log() { printf 'entrypoint: %s\n' "$*" >&2; }

# -- healthcheck ---------------------------------------------------------------------------

healthcheck() {
  local scheme=http host=${LISTEN_HOST:-0.0.0.0}
  [[ -n ${TLS_CERT_FILE:-} ]] && scheme=https
  case $host in 0.0.0.0 | :: | "") host=127.0.0.1 ;; esac
  [[ $host == *:* ]] && host="[$host]"
  # The certificate names the public host, not 127.0.0.1: check that it answers, not who it is.
  exec "$PYTHON" -c '
import ssl, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=4, context=ssl._create_unverified_context()) as r:
        print(r.read(300).decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(f"unhealthy: HTTP {e.code} {e.read(300).decode(errors=chr(63))}")
    sys.exit(1)
except OSError as e:
    print(f"unhealthy: {e}")
    sys.exit(1)
' "$scheme://$host:${LISTEN_PORT:-${PORT:-8080}}/health"
}

if [[ ${1:-} == healthcheck ]]; then
  healthcheck
elif [[ $# -gt 0 ]]; then
  log "unknown argument: $1 (expected nothing or 'healthcheck')"
  exit 2
fi

# -- settings ------------------------------------------------------------------------------

problems=()
problem() { problems+=("$*"); }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

# A secret from NAME or from the file named by NAME_FILE (a mounted secret keeps it out of
# `docker inspect`); trailing whitespace and newlines are dropped.
read_secret() {
  local name=$1 file_var="${1}_FILE" value
  local file=${!file_var:-}
  if [[ -n $file ]]; then
    if [[ -n ${!name:-} ]]; then
      problem "$name and $file_var are both set: keep one"
      return 1
    fi
    if [[ ! -r $file || ! -f $file ]]; then
      problem "$file_var: cannot read $file (it must be readable by uid $(id -u))"
      return 1
    fi
    value=$(<"$file")
  else
    value=${!name:-}
  fi
  value=${value%"${value##*[![:space:]]}"}
  printf -v "$name" '%s' "$value"
}

for name in PRIVATEMODE_START_TIMEOUT PRIVATEMODE_LOG_MAX_MB; do
  if [[ -n ${!name:-} && ! ${!name} =~ ^[0-9]+$ ]]; then
    problem "$name: expected a whole number, got ${!name}"
  fi
done

if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  problem "bash $BASH_VERSION is too old: entrypoint.sh needs bash 5.1 or newer (wait -n -p)"
fi

PRIVATEMODE_PORT=${PRIVATEMODE_PORT:-8081}
run_privatemode=0
if ! is_port "$PRIVATEMODE_PORT"; then
  problem "PRIVATEMODE_PORT: not a TCP port: $PRIVATEMODE_PORT"
else
  case ${UPSTREAM_URL:-} in
    "" | "http://127.0.0.1:$PRIVATEMODE_PORT" | "http://127.0.0.1:$PRIVATEMODE_PORT/" | \
      "http://localhost:$PRIVATEMODE_PORT" | "http://localhost:$PRIVATEMODE_PORT/")
      run_privatemode=1
      export UPSTREAM_URL="http://127.0.0.1:$PRIVATEMODE_PORT"
      ;;
  esac
fi

# The secrets stay in this shell, unexported: no child inherits them unless given on purpose.
export -n ADMIN_PASSWORD PRIVATEMODE_API_KEY
if read_secret ADMIN_PASSWORD; then
  if [[ -z $ADMIN_PASSWORD ]]; then
    problem "ADMIN_PASSWORD is not set: the admin needs a password of at least 12 characters"
  elif ((${#ADMIN_PASSWORD} < 12)); then
    problem "ADMIN_PASSWORD is too short: ${#ADMIN_PASSWORD} characters, at least 12 are needed"
  fi
fi

if ((run_privatemode)); then
  if read_secret PRIVATEMODE_API_KEY && [[ -z $PRIVATEMODE_API_KEY ]]; then
    problem "PRIVATEMODE_API_KEY is not set: privatemode-proxy needs it (or set UPSTREAM_URL to another server)"
  fi
  if ! command -v privatemode-proxy >/dev/null; then
    problem "privatemode-proxy: not found on PATH (or set UPSTREAM_URL to another server)"
  fi
fi

if [[ -n ${TLS_CERT_FILE:-} || -n ${TLS_KEY_FILE:-} ]]; then
  for name in TLS_CERT_FILE TLS_KEY_FILE; do
    if [[ -z ${!name:-} ]]; then
      problem "$name is not set: TLS_CERT_FILE and TLS_KEY_FILE go together"
    elif [[ ! -r ${!name} || ! -f ${!name} ]]; then
      problem "$name: cannot read ${!name} (it must be readable by uid $(id -u))"
    fi
  done
fi

export DATA_DIR=${DATA_DIR:-./data}
if ! mkdir -p "$DATA_DIR" 2>/dev/null || [[ ! -w $DATA_DIR || ! -x $DATA_DIR ]]; then
  problem "DATA_DIR: $DATA_DIR is not a folder uid $(id -u) can write (on the host: chown $(id -u):$(id -g) it)"
fi

if ((${#problems[@]})); then
  for p in "${problems[@]}"; do log "error: $p"; done
  log "nothing started: fix the setting(s) above"
  exit 2
fi

# Every other setting, checked by the code that will use it, before anything starts.
if ! config_error=$(exec "$PYTHON" -c '
import sys
from storage import config
try:
    config.load()
except config.ConfigError as e:
    sys.exit(str(e))
' 2>&1); then
  log "error: ${config_error:-cannot run $PYTHON to check the settings}"
  log "nothing started: fix the setting(s) above"
  exit 2
fi

# -- children ------------------------------------------------------------------------------

names=()   # by index: what runs
pids=()
declare -A exited=()   # name -> status, for a child that ended by itself
key_dir=""
timer_pid=""
stopping=0

on_signal() {
  stopping=1
  log "received SIG$1: stopping"
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
cleanup() {
  [[ -n $timer_pid ]] && kill "$timer_pid" 2>/dev/null
  [[ -n $key_dir ]] && rm -rf -- "$key_dir"
}
trap cleanup EXIT

pid_of() {
  local i
  for i in "${!names[@]}"; do [[ ${names[i]} == "$1" ]] && echo "${pids[i]}"; done
}

name_of() {
  local i
  for i in "${!pids[@]}"; do [[ ${pids[i]} == "$1" ]] && echo "${names[i]}"; done
}

started() {
  names+=("$1")
  pids+=("$2")
  log "started $1 (pid $2)"
}

# Stop one child: SIGTERM, then SIGKILL after $2 seconds; logs how it ended.
stop_child() {
  local name=$1 timeout=$2 pid status deadline
  pid=$(pid_of "$name")
  [[ -n $pid ]] || return 0
  if [[ -n ${exited[$name]:-} ]]; then
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        log "$name did not stop within ${timeout} s: killing it"
        kill -KILL "$pid" 2>/dev/null
        break
      fi
      sleep 0.1
    done
  fi
  wait "$pid" 2>/dev/null
  status=$?
  log "$name stopped (status $status)"
}

log_max_bytes=$((${PRIVATEMODE_LOG_MAX_MB:-10} * 1024 * 1024))
pm_log=${PRIVATEMODE_LOG_FILE:-$DATA_DIR/privatemode-proxy.log}

# Keep privatemode-proxy's log bounded: beyond the limit it moves to *.1 (the previous *.1
# goes). Copy, then truncate: the proxy keeps its file open in append mode.
rotate_log() {
  local size
  size=$(stat -c %s "$pm_log" 2>/dev/null) || return 0
  if ((size > log_max_bytes)); then
    cp -f -- "$pm_log" "$pm_log.1" && : >"$pm_log"
    log "moved $pm_log ($size bytes) to $pm_log.1"
  fi
}

key_folder() {
  local dir
  for dir in "${PRIVATEMODE_KEY_DIR:-}" /dev/shm "${TMPDIR:-/tmp}"; do
    if [[ -n $dir && -d $dir && -w $dir ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

start_privatemode() {
  local dir key_file port=$PRIVATEMODE_PORT
  if ! dir=$(key_folder); then
    log "error: no writable folder for the key file (set PRIVATEMODE_KEY_DIR to a tmpfs folder)"
    return 1
  fi
  if [[ $(stat -f -c %T "$dir" 2>/dev/null) != tmpfs ]]; then
    log "warning: $dir is not a tmpfs: the Privatemode key file is written to disk"
  fi
  key_dir=$(mktemp -d "$dir/privatemode-key.XXXXXX") || return 1
  key_file=$key_dir/api-key
  # printf is a builtin: the key is never in an argument list. The umask makes the file 0600.
  printf '%s' "$PRIVATEMODE_API_KEY" >"$key_file" || return 1
  unset PRIVATEMODE_API_KEY

  mkdir -p "$DATA_DIR/privatemode" "$(dirname "$pm_log")" || return 1
  rotate_log
  (
    exec privatemode-proxy --apiKey "@$key_file" --port "$port" --workspace "$DATA_DIR/privatemode"
  ) >>"$pm_log" 2>&1 &
  started privatemode-proxy $!

  # The gateway's /health reports privatemode-proxy anyway; waiting spares a few 502s.
  local pid=$! deadline=$((SECONDS + ${PRIVATEMODE_START_TIMEOUT:-60}))
  until (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "privatemode-proxy exited during start; its log: $pm_log"
      tail -n 5 -- "$pm_log" >&2
      return 1
    fi
    if ((stopping)); then return 0; fi
    if ((SECONDS >= deadline)); then
      log "privatemode-proxy does not listen on $port yet; going on (see $pm_log)"
      return 0
    fi
    sleep 0.2
  done
  log "privatemode-proxy listens on $port (log: $pm_log)"
}

start_python() {
  local name=$1 module=$2
  (
    # Only the admin gets its password.
    if [[ $module == admin ]]; then export ADMIN_PASSWORD; fi
    exec "$PYTHON" -m "$module"
  ) &
  started "$name" $!
}

# -- supervision ---------------------------------------------------------------------------

# Start the children, wait until one ends by itself or a signal asks to stop, stop the rest.
# Returns 0 for a requested stop, 1 when a child ended by itself or could not start.
supervise() {
  local exit_code=0 done_pid status name shutdown_timeout
  if ((run_privatemode)); then
    start_privatemode || exit_code=1
  else
    log "UPSTREAM_URL is $UPSTREAM_URL: privatemode-proxy is not started"
  fi
  unset PRIVATEMODE_API_KEY

  if ((exit_code == 0 && !stopping)); then
    start_python admin admin
    start_python gateway addons
  fi

  while ((exit_code == 0 && !stopping)); do
    if [[ -z $timer_pid ]]; then
      sleep 60 &
      timer_pid=$!
    fi
    done_pid=""
    wait -n -p done_pid "${pids[@]}" "$timer_pid"
    status=$?
    if ((stopping)) || [[ -z $done_pid ]]; then
      continue
    fi
    if [[ $done_pid == "$timer_pid" ]]; then
      timer_pid=""
      ((run_privatemode)) && rotate_log
      continue
    fi
    name=$(name_of "$done_pid")
    exited[$name]=$status
    log "$name exited by itself (status $status): stopping the others"
    exit_code=1
  done

  # The gateway first: it finishes running requests and streams (which still need the
  # upstream) and flushes usage within SHUTDOWN_TIMEOUT; then the admin and privatemode-proxy.
  shutdown_timeout=${SHUTDOWN_TIMEOUT:-30}
  shutdown_timeout=${shutdown_timeout%%.*}
  stop_child gateway $((${shutdown_timeout:-0} + 15))
  stop_child admin 10
  stop_child privatemode-proxy 10
  if ((exit_code)); then
    log "exiting with status $exit_code"
  else
    log "stopped"
  fi
  return "$exit_code"
}

supervise
