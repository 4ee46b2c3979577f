# shellcheck shell=bash
# Sourced by the entrypoints of the images that run a server as a non-root user with a config
# Pulumi uploads as a root-owned 0400 file under /run/secrets/ before the start (patroni, etcd,
# haproxy); the recipes install it as /usr/local/lib/sin/entrypoint-lib.sh. The caller sets
# entrypoint_name. Nothing here prints a file's content or puts a secret in the environment or
# on a command line.

say() { printf '%s [%s] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$entrypoint_name" "$*" >&2; }
die() { say "error: $*"; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || die "started as uid $(id -u): start the container as root (no --user); the entrypoint reads the root-only files under /run/secrets and then runs the server as $1"
}

# private_copy SRC DST USER: the uploaded SRC (root, 0400) copied to DST, owned by USER with mode
# 0600, in a directory only USER (and root) can enter. Dies when SRC is missing.
private_copy() {
  local src="$1" dst="$2" user="$3"
  [ -f "$src" ] || die "$src is missing: upload it (owned by root, mode 0400) into the container before it starts"
  install -d -o "$user" -g "$user" -m 0700 "$(dirname "$dst")"
  install -o "$user" -g "$user" -m 0600 "$src" "$dst"
}

# own_dir DIR USER: DIR (a volume, maybe new and root-owned) and everything in it owned by USER,
# DIR itself mode 0700.
own_dir() {
  local dir="$1" user="$2"
  mkdir -p "$dir"
  find "$dir" \! -user "$user" -exec chown "$user:$user" '{}' +
  chmod 0700 "$dir"
}

# run_as USER COMMAND...: exec COMMAND as USER (its groups, HOME and USER), as the container's
# main process.
run_as() {
  local user="$1"; shift
  HOME="$(getent passwd "$user" | cut -d: -f6)"; USER="$user"; LOGNAME="$user"
  export HOME USER LOGNAME
  exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
}
