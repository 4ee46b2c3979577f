#!/usr/bin/env bash
# Installs what tests/remote_host.py needs to build a Docker host reachable only over SSH
# (a network namespace with its own dockerd and sshd): openssh-server and openssh-client,
# iproute2 (`ip netns`, veth) and util-linux (nsenter, unshare), all from Debian.
# The packaged ssh service must never run: /etc/ssh/sshd_not_to_be_run is created before the
# install (the ssh unit and init script honour it) and policy-rc.d suppresses the start.
# Idempotent: with everything present it only checks. Logs go to stderr.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# command -> Debian package providing it
declare -A wanted=([sshd]=openssh-server [ssh]=openssh-client [ssh-keygen]=openssh-client
                   [ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
if [ "${#missing[@]}" -eq 0 ]; then
  log "sshd, ssh, ip, nsenter and unshare present"
else
  mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
  require_root "missing ${packages[*]}"
  log "installing ${packages[*]} from Debian (system ssh service disabled)"
  mkdir -p /etc/ssh && touch /etc/ssh/sshd_not_to_be_run
  apt_install_no_start "${packages[@]}"
fi
if [ -e /usr/sbin/sshd ] && [ ! -e /etc/ssh/sshd_not_to_be_run ] && [ "$(id -u)" = 0 ]; then
  log "disabling the system ssh service (/etc/ssh/sshd_not_to_be_run); the tests start their own sshd"
  touch /etc/ssh/sshd_not_to_be_run
fi
command -v sshd || echo /usr/sbin/sshd
