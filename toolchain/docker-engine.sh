#!/usr/bin/env bash
# Make sure a Docker daemon answers on this machine, idempotently.
#
#  1. If `docker info` already answers (any daemon, any client on PATH), use it.
#  2. Otherwise, as root on Debian: install Debian's docker.io (20.10.x, API 1.41)
#     plus iptables, running `apt-get update` only when the package lists cannot
#     provide them, then start dockerd in the background (no systemd needed) and
#     wait until it answers.
#
# The last stdout lines are key=value facts for callers:
#   docker_client=/path/to/docker   docker_server_version=20.10.24
#   docker_api_version=1.41         docker_host=unix:///var/run/docker.sock
#
# Environment knobs:
#   SIN_DOCKERD_LOG        dockerd log file (default /var/log/sin-dockerd.log)
#   SIN_DOCKERD_TIMEOUT    seconds to wait for the daemon (default 60)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dockerd_log="${SIN_DOCKERD_LOG:-/var/log/sin-dockerd.log}"
deadline_s="${SIN_DOCKERD_TIMEOUT:-60}"

# Pick a client. Debian's own client (/usr/bin/docker, same release as the daemon)
# is preferred once installed; the newer client in /usr/local/bin (28.x, API 1.50)
# negotiates down to the daemon's API version by itself, so either works.
pick_client() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker
  elif command -v docker >/dev/null 2>&1; then command -v docker
  else echo ""
  fi
}

daemon_answers() {
  local c="$1"
  [ -n "$c" ] || return 1
  timeout 10 "$c" info >/dev/null 2>&1
}

report() {
  local c="$1" sv api
  sv="$(timeout 10 "$c" version --format '{{.Server.Version}}' 2>/dev/null || true)"
  api="$(timeout 10 "$c" version --format '{{.Server.APIVersion}}' 2>/dev/null || true)"
  # A newer client talking to an older daemon downgrades automatically (API
  # negotiation). Verify that it really does, and pin DOCKER_API_VERSION otherwise.
  local other=/usr/local/bin/docker
  if [ -x "$other" ] && [ "$other" != "$c" ]; then
    if timeout 10 "$other" info >/dev/null 2>&1; then
      log "$other ($("$other" version --format '{{.Client.Version}}' 2>/dev/null)) negotiates with the daemon: OK"
    elif DOCKER_API_VERSION="$api" timeout 10 "$other" info >/dev/null 2>&1; then
      log "$other needs DOCKER_API_VERSION=$api to talk to this daemon"
    else
      log "WARNING: $other cannot talk to this daemon; use $c"
    fi
  fi
  log "daemon $sv (API $api) answers; client $c"
  echo "docker_client=$c"
  echo "docker_server_version=$sv"
  echo "docker_api_version=$api"
  echo "docker_host=${DOCKER_HOST:-unix:///var/run/docker.sock}"
}

client="$(pick_client)"
if daemon_answers "$client"; then
  report "$client"
  exit 0
fi

require_root "no Docker daemon answers: start one, or let this script install and start one"
[ -r /etc/debian_version ] || die "no Docker daemon answers and this is not Debian: install Docker Engine yourself"

# --- install (only what is missing)
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=("docker.io${DOCKER_IO_DEB_VERSION:+=$DOCKER_IO_DEB_VERSION}")
# dockerd needs iptables for bridge networks and port publishing.
[ -x /usr/sbin/iptables ] || need_pkgs+=(iptables)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  # Lists that lack docker.io, or stale ones (404s), are refreshed once by apt_install.
  apt_install "${need_pkgs[@]}"
fi
client="$(pick_client)"
[ -n "$client" ] || die "no docker client after installing docker.io"

# --- start dockerd in the background unless one is already starting
if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  log "dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet: waiting"
else
  rm -f /var/run/docker.pid
  mkdir -p "$(dirname "$dockerd_log")"
  log "starting dockerd, log: $dockerd_log"
  # setsid: own session, so it outlives this script and its caller's process group.
  # dockerd starts its own containerd (docker.io depends on containerd + runc).
  setsid dockerd --log-level=warn ${SIN_DOCKERD_ARGS:-} </dev/null >>"$dockerd_log" 2>&1 &
fi

start=$SECONDS
until daemon_answers "$client"; do
  if [ $((SECONDS - start)) -ge "$deadline_s" ]; then
    log "last lines of $dockerd_log:"; tail -n 30 "$dockerd_log" >&2 || true
    die "dockerd did not answer within ${deadline_s}s"
  fi
  # Give setsid a moment to exec dockerd before reading its absence as a crash.
  if [ $((SECONDS - start)) -ge 3 ] && ! pgrep -x dockerd >/dev/null 2>&1; then
    log "last lines of $dockerd_log:"; tail -n 30 "$dockerd_log" >&2 || true
    die "dockerd exited during start-up"
  fi
  sleep 1
done
log "dockerd answered after $((SECONDS - start))s"
report "$client"
