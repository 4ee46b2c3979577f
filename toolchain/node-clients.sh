#!/usr/bin/env bash
# The ADR's Node clients (node-postgres and ioredis, as its lib/db.ts and lib/redis.ts use them),
# for the replicated topology's test that the ADR's own applications keep working: installed by
# `npm ci` from toolchain/node-clients/package-lock.json (versions and integrity pinned) into
# $SIN_CACHE/node-clients/<lock file's sha256>/, once. Node itself comes from Debian (nodejs).
# Prints the node_modules directory last.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
src="$toolchain_dir/node-clients"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  [ "$(id -u)" = 0 ] || die "node and npm are missing: apt-get install nodejs npm (as root)"
  log "installing nodejs and npm from Debian"
  apt_install nodejs npm
fi
have="$(node --version | sed 's/^v//')"
want="$(pin NODE_MIN_VERSION)"
[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1)" = "$want" ] ||
  die "node $have is older than $want (NODE_MIN_VERSION in toolchain/versions.env): the clients need it"

key="$(sha256sum "$src/package-lock.json" | cut -c1-16)"
dir="$SIN_CACHE/node-clients/$key"
if [ -f "$dir/.complete" ]; then
  log "cached: pg and ioredis in $dir"
else
  mkdir -p "$SIN_CACHE/node-clients"
  lock_build "$SIN_CACHE/node-clients/.lock"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    cp "$src/package.json" "$src/package-lock.json" "$dir.tmp/"
    log "npm ci of $(node -p "Object.entries(require('$src/package.json').dependencies).map(e => e.join('@')).join(', ')")"
    (cd "$dir.tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in $dir.tmp"
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
fi
echo "$dir/node_modules"
