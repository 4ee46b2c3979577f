# shellcheck shell=bash
# Sourced by every toolchain/*.sh (after `set -euo pipefail`): the pins of versions.env, one log
# style ("[<script>] message" on stderr), the Go lookup, apt installs, the build lock.

toolchain_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$toolchain_dir/versions.env"
log_name="$(basename "$0" .sh)"

log() { printf '[%s] %s\n' "$log_name" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The value of the versions.env pin named $1; dies if it is empty.
pin() {
  [ -n "${!1:-}" ] || die "$1 is not set in toolchain/versions.env"
  printf '%s\n' "${!1}"
}

# The calling script's leading comment block (its usage), for --help.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; }

# The Go toolchain's path: `go` on PATH, else /usr/local/go/bin/go (polyglot machines).
# Fails (status 1, no output) when there is none.
find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

# find_go, or die unless it is at least GO_MIN_VERSION (versions.env).
require_go() {
  local go have want
  want="$(pin GO_MIN_VERSION)"
  go="$(find_go)" || die "no Go toolchain found: need Go >= $want on PATH or in /usr/local/go/bin"
  have="$(GOTOOLCHAIN=local "$go" version | awk '{ sub(/^go/, "", $3); print $3 }')"
  [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1)" = "$want" ] ||
    die "$go is Go $have: need Go >= $want (GO_MIN_VERSION in toolchain/versions.env)"
  echo "$go"
}

# Hold the build lock $1 (fd 9) until the script exits; a second caller says so and waits.
lock_build() {
  exec 9>"$1"
  flock -n 9 && return 0
  log "another build holds $1; waiting for it"
  flock 9
}

# Write a policy-rc.d at $1 that answers 101: Debian maintainer scripts then start no service.
deny_service_starts() {
  printf '#!/bin/sh\nexit 101\n' >"$1"
  chmod 755 "$1"
}

# apt-get install "$@" without recommends, logs to stderr; when the existing package lists cannot
# provide them, `apt-get update` once and retry.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
  "${apt[@]}" install -y --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  log "apt-get install $* failed with the existing package lists: apt-get update and retry"
  "${apt[@]}" update >&2 || die "apt-get update failed"
  "${apt[@]}" install -y --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
}

# apt_install on this host with no service started by the packages (the packaged servers must not
# take the ports of the dev stack); a policy-rc.d that was there before is put back afterwards.
apt_install_no_start() {
  (
    policy=/usr/sbin/policy-rc.d
    saved=""
    [ ! -e "$policy" ] || saved="$(cat "$policy")"
    trap 'if [ -n "$saved" ]; then printf "%s\n" "$saved" >"$policy"; else rm -f "$policy"; fi' EXIT
    deny_service_starts "$policy"
    apt_install "$@"
  )
}

# Die unless root; $1 says what needs it.
require_root() { [ "$(id -u)" = 0 ] || die "$1; run $0 as root"; }
