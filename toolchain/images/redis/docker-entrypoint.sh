#!/bin/sh
# Entrypoint of sin-local/redis (Debian bookworm's redis-server 7.0.x). Our own
# script, following the official redis image's contract:
#   `docker run IMAGE /path/redis.conf [--opt val]` and `docker run IMAGE --opt val`
#   run redis-server with those arguments; the server runs as user redis (uid 999)
#   with umask 0077, in /data (VOLUME). Any other command runs as given.
set -eu

case "${1:-}" in
  -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
  # Make the data directory (volume or bind mount) writable for redis.
  find . \! -user redis -exec chown redis:redis '{}' + 2>/dev/null || :
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "${1:-}" = redis-server ]; then
  umask 0077
fi
exec "$@"
