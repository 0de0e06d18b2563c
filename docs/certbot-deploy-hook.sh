#!/usr/bin/env bash
# certbot deploy hook: copy a renewed certificate into the folder the gateway container reads.
#
# The gateway re-reads TLS_CERT_FILE and TLS_KEY_FILE when they change (within 60 s), so a
# renewal needs no restart. Install it once (docs/deploy-azure.md, step 11):
#
#   sudo install -m 0755 docs/certbot-deploy-hook.sh \
#     /etc/letsencrypt/renewal-hooks/deploy/privatemode-gateway.sh
#
# certbot runs every hook in that folder after each successful renewal, with RENEWED_LINEAGE
# set (e.g. /etc/letsencrypt/live/gw.example.com). Run it by hand for the first copy:
#
#   sudo RENEWED_LINEAGE=/etc/letsencrypt/live/gw.example.com \
#     /etc/letsencrypt/renewal-hooks/deploy/privatemode-gateway.sh
#
# Settings (environment):
#   GATEWAY_CERT_DIR  the host folder mounted at /app/certs (/opt/privatemode-gateway/certs)
#   GATEWAY_UID       the container's uid (10001)
#   GATEWAY_DOMAIN    only act for this certificate name (default: every renewed certificate)
set -euo pipefail

cert_dir=${GATEWAY_CERT_DIR:-/opt/privatemode-gateway/certs}
uid=${GATEWAY_UID:-10001}
lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE is not set: certbot sets it; by hand, name /etc/letsencrypt/live/DOMAIN}
name=$(basename "$lineage")

if [[ -n ${GATEWAY_DOMAIN:-} && $name != "$GATEWAY_DOMAIN" ]]; then
  exit 0
fi
for file in fullchain.pem privkey.pem; do
  if [[ ! -r $lineage/$file ]]; then
    echo "privatemode-gateway hook: cannot read $lineage/$file" >&2
    exit 1
  fi
done

install -d -m 0700 -o "$uid" -g "$uid" "$cert_dir"

# Copy under a temporary name in the same folder, then rename: the gateway never reads a
# half-written file. The key first, so that a new key is never paired with an old chain for
# longer than the two renames take (the gateway would then retry at its next check).
place() {
  local source=$1 target=$2 mode=$3 tmp
  tmp=$(mktemp "$cert_dir/.$target.XXXXXX")
  cp -- "$source" "$tmp"
  chown "$uid:$uid" "$tmp"
  chmod "$mode" "$tmp"
  mv -f -- "$tmp" "$cert_dir/$target"
}
place "$lineage/privkey.pem" privkey.pem 0400
place "$lineage/fullchain.pem" fullchain.pem 0444

echo "privatemode-gateway hook: installed the certificate $name in $cert_dir; the gateway serves it within 60 s"
