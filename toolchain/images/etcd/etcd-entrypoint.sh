#!/usr/bin/env bash
# Entrypoint of sin-local/etcd. `docker run IMAGE [etcd] [--flag ...]` runs etcd with those flags
# as user etcd (uid 999); started as root, it first makes the volume /var/lib/etcd (the working
# directory; give --data-dir /var/lib/etcd) owned by etcd with mode 0700. Any other command
# (`etcdctl ...`, `etcdutl ...`, `bash`) runs as given.
set -Eeo pipefail
entrypoint_name=etcd-entrypoint
. /usr/local/lib/sin/entrypoint-lib.sh

if [ "${1:-}" = etcd ]; then
  shift
elif [ "$#" -gt 0 ] && [ "${1:0:1}" != - ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  own_dir /var/lib/etcd etcd
  run_as etcd etcd "$@"
fi
exec etcd "$@"
