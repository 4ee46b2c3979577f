#!/usr/bin/env bash
# Entrypoint of sin-local/patroni. Started as root (no --user): copies the Patroni config that
# Pulumi uploaded before the start, /run/secrets/patroni.yml (root, 0400, passwords inside), to
# /run/patroni/patroni.yml (postgres, 0600; not in the data volume), makes the data volume
# /var/lib/postgresql/data owned by postgres with mode 0700, then runs `patroni
# /run/patroni/patroni.yml` as postgres (uid 999) as the container's main process (Patroni reaps
# children when it is PID 1). Any other command (`patronictl ...`, `psql ...`, `bash`) runs as given.
set -Eeo pipefail
entrypoint_name=patroni-entrypoint
. /usr/local/lib/sin/entrypoint-lib.sh

if [ "$#" -gt 0 ] && [ "$*" != patroni ]; then
  exec "$@"
fi

require_root postgres
private_copy /run/secrets/patroni.yml /run/patroni/patroni.yml postgres
own_dir /var/lib/postgresql/data postgres
say "starting Patroni as postgres with /run/patroni/patroni.yml"
run_as postgres patroni /run/patroni/patroni.yml
