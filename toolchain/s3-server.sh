#!/usr/bin/env bash
# Builds (or finds in the cache) versitygw, the S3-compatible server the backup tests start
# on loopback: github.com/versity/versitygw/cmd/versitygw @ $VERSITYGW_VERSION, built with
# this machine's Go from the Go module proxy (module graph pinned by versitygw's own go.sum).
#
# Usage:  bin=$(toolchain/s3-server.sh | tail -1)    # last stdout line = the binary path
#         toolchain/s3-server.sh --force              # rebuild even if cached
# Logs go to stderr. Idempotent: a cached binary is checked and returned in well under a second.
#
# Cache layout ($SIN_CACHE from versions.env):
#   $SIN_CACHE/versitygw/<version>/bin/versitygw
# A cached binary is reused when it runs `--version` and its embedded build info names the
# pinned module version; otherwise it is rebuilt from nothing (~1 min on 2 cores, cold).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

version="$(pin VERSITYGW_VERSION)"
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VERSITYGW_VERSION='$VERSITYGW_VERSION' is not vX.Y.Z"

module="github.com/versity/versitygw"
pkg="$module/cmd/versitygw"
cache_root="$SIN_CACHE/versitygw/$version"
binary="$cache_root/bin/versitygw"

go_bin="$(find_go || true)"   # only to check a cached binary's build info when Go is here

# The binary runs, and (when Go is here to read it) was built from the pinned module version.
is_usable() {
    [ -x "$1" ] && "$1" --version >/dev/null 2>&1 || return 1
    [ -z "$go_bin" ] && return 0
    "$go_bin" version -m "$1" 2>/dev/null | awk -v m="$module" -v v="$version" '$1 == "mod" && $2 == m && $3 == v {ok=1} END {exit !ok}'
}

if [ "$force" = 0 ] && is_usable "$binary"; then
    log "cached: versitygw $version in $binary"
    echo "$binary"
    exit 0
fi

go_bin="$(require_go)"
mkdir -p "$cache_root"

# One build at a time per version; a second caller waits and then finds the cache.
lock_build "$cache_root/.lock"
if [ "$force" = 0 ] && is_usable "$binary"; then
    log "cached (built by a concurrent run): $binary"
    echo "$binary"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/.tmp-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"

log "building versitygw $version with $("$go_bin" version); takes ~1 min on 2 cores"
start=$(date +%s)
(
    export CGO_ENABLED=0 GOBIN="$tmp/bin" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export GOFLAGS="-buildvcs=false -p=${S3_SERVER_BUILD_JOBS:-2}"
    "$go_bin" install -trimpath -ldflags "-s -w -X main.Version=$version" "$pkg@$version"
) >&2 || die "go install $pkg@$version failed"
is_usable "$tmp/bin/versitygw" || die "the freshly built $tmp/bin/versitygw does not run --version or is not $module $version"

rm -rf "$cache_root/bin"
mv "$tmp/bin" "$cache_root/bin"
log "built in $(( $(date +%s) - start ))s: $binary ($(du -h "$binary" | cut -f1))"
echo "$binary"
