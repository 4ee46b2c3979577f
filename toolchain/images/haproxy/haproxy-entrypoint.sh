#!/usr/bin/env bash
# Entrypoint of sin-local/haproxy. Started as root (no --user): copies the config Pulumi uploaded
# before the start, /run/secrets/haproxy.cfg (root, 0400; it may hold stats or userlist
# passwords), to /run/haproxy/haproxy.cfg (haproxy, 0600), then runs `haproxy -W -db -f` on it as
# user haproxy (uid 999: the config must bind ports above 1024) as the container's main process.
# Any other command (`haproxy -c -f ...`, `bash`) runs as given.
set -Eeo pipefail
entrypoint_name=haproxy-entrypoint
. /usr/local/lib/sin/entrypoint-lib.sh

if [ "$#" -gt 0 ] && [ "$*" != haproxy ]; then
  exec "$@"
fi

require_root haproxy
private_copy /run/secrets/haproxy.cfg /run/haproxy/haproxy.cfg haproxy
say "starting HAProxy as haproxy with /run/haproxy/haproxy.cfg"
run_as haproxy haproxy -W -db -f /run/haproxy/haproxy.cfg
