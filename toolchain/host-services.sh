#!/usr/bin/env bash
# Installs the server binaries the integration tests start on loopback: Redis 7 from
# Debian bookworm (the suite starts its own servers; the packaged service must not run
# and take port 6379 from the dev stack). PostgreSQL 16 comes from toolchain/pg16.sh.
set -euo pipefail
log() { echo "host-services: $*" >&2; }

if command -v redis-server >/dev/null && redis-server --version | grep -q ' v=7\.'; then
  log "redis-server $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/') present"
else
  [ "$(id -u)" = 0 ] || { log "redis-server 7 is missing; run this script as root to install it"; exit 1; }
  log "installing redis-server from Debian (service start suppressed)"
  policy=/usr/sbin/policy-rc.d
  restore=""
  [ -e "$policy" ] && restore=$(cat "$policy")
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  trap 'if [ -n "$restore" ]; then printf "%s\n" "$restore" > "$policy"; else rm -f "$policy"; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends redis-server >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=600 update >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends redis-server >/dev/null
  }
fi
command -v redis-server
