#!/usr/bin/env bash
# Installs the server binaries the integration tests start on loopback: Redis 7 from
# Debian bookworm (the suite starts its own servers; the packaged service must not run
# and take port 6379 from the dev stack). PostgreSQL 16 comes from toolchain/pg16.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v redis-server >/dev/null && redis-server --version | grep -q ' v=7\.'; then
  log "redis-server $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/') present"
else
  require_root "redis-server 7 is missing"
  log "installing redis-server from Debian (service start suppressed)"
  apt_install_no_start redis-server
fi
command -v redis-server
