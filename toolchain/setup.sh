#!/usr/bin/env bash
# Everything this project needs on a fresh Debian machine, idempotently and cached:
# the Python venv, the Pulumi CLI + Python language host (an installed upstream `pulumi` on PATH,
# else built, unpatched, from Go modules) + docker provider (built; installed into the engine's
# plugin cache), a Docker Engine, the local images (PostgreSQL 16, Redis 7, the backup agent,
# Patroni, etcd, HAProxy), the host servers the integration tests start (PostgreSQL 16, Redis 7,
# the versitygw S3 server), and sshd/iproute2 for the remote-host harness.
# A second run takes seconds.
#
# Logs go to stderr; stdout is shell to eval:  eval "$(toolchain/setup.sh)"
# It exports PATH (toolchain first), SIN_LOCAL_POSTGRES_IMAGE, SIN_LOCAL_REDIS_IMAGE,
# SIN_LOCAL_BACKUP_IMAGE, SIN_LOCAL_PATRONI_IMAGE, SIN_LOCAL_ETCD_IMAGE, SIN_LOCAL_HAPROXY_IMAGE,
# SIN_PG16_DIR and SIN_VERSITYGW. Steps can be skipped with
# SIN_SETUP_SKIP="images host" etc.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
skip() { case " ${SIN_SETUP_SKIP:-} " in *" $1 "*) return 0;; *) return 1;; esac; }
last() { tail -n 1; }
started=$(date +%s)

# --- Python venv with the pinned requirements (re-created when requirements.txt changes)
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating $venv from requirements.txt"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/requirements.txt" >&2
  echo "$want" > "$stamp"
else
  log "venv up to date"
fi

# Link (or copy) the provider binary $1 (pulumi-resource-<name>, version $2) into the engine's
# plugin cache, $PULUMI_HOME/plugins (default ~/.pulumi/plugins), where the engine finds it by
# name and version. On $PATH it would work too, but every pulumi command would then warn
# "using pulumi-resource-<name> from $PATH".
install_provider_plugin() {
  local binary="$1" version="$2" file home dir
  file="$(basename "$binary")"
  home="$(getent passwd "$(id -u)" | cut -d: -f6)"   # the engine's default: the user's home
  dir="${PULUMI_HOME:-${home:-$HOME}/.pulumi}/plugins/resource-${file#pulumi-resource-}-v$version"
  if [ ! -e "$dir.partial" ] && { [ "$binary" -ef "$dir/$file" ] || cmp -s "$binary" "$dir/$file"; }; then
    log "provider plugin installed in $dir"
    return 0
  fi
  mkdir -p "$(dirname "$dir")"
  (
    # The engine's own lock and marker: it skips a plugin directory while <dir>.partial exists.
    flock 9
    : >"$dir.partial"
    mkdir -p "$dir"
    ln -f "$binary" "$dir/.$file.new" 2>/dev/null || cp "$binary" "$dir/.$file.new"
    mv -f "$dir/.$file.new" "$dir/$file"
    rm -f "$dir.partial"
  ) 9>"$dir.lock"
  log "installed the provider plugin into $dir"
}

# --- Pulumi CLI, Python language host and the docker provider (an installed upstream pulumi on
# PATH is used as it is)
pulumi_bin="$("$here/pulumi.sh" | last)"
provider_bin="$("$here/docker-provider.sh" | last)"
install_provider_plugin "$provider_bin/pulumi-resource-docker" "$(pin DOCKER_PROVIDER_VERSION)"
log "pulumi $("$pulumi_bin/pulumi" version) in $pulumi_bin; provider from $provider_bin"

# --- Docker Engine and local images
if ! skip docker; then
  "$here/docker-engine.sh" >/dev/null
  if ! skip images; then
    images="$("$here/images.sh")"
    pg_image="$(sed -n 's/^postgres_image=//p' <<<"$images")"
    redis_image="$(sed -n 's/^redis_image=//p' <<<"$images")"
    echo "export SIN_LOCAL_POSTGRES_IMAGE='$pg_image'"
    echo "export SIN_LOCAL_REDIS_IMAGE='$redis_image'"
    echo "export SIN_LOCAL_BACKUP_IMAGE='$(sed -n 's/^backup_image=//p' <<<"$images")'"
    echo "export SIN_LOCAL_PATRONI_IMAGE='$(sed -n 's/^patroni_image=//p' <<<"$images")'"
    echo "export SIN_LOCAL_ETCD_IMAGE='$(sed -n 's/^etcd_image=//p' <<<"$images")'"
    echo "export SIN_LOCAL_HAPROXY_IMAGE='$(sed -n 's/^haproxy_image=//p' <<<"$images")'"
  fi
fi

# --- Servers the integration tests start on loopback
if ! skip host; then
  echo "export SIN_PG16_DIR='$("$here/pg16.sh" | last)'"
  echo "export SIN_VERSITYGW='$("$here/s3-server.sh" | last)'"
  "$here/host-services.sh" >/dev/null
  "$here/remote-host.sh" >/dev/null
  echo "export SIN_NODE_CLIENTS='$("$here/node-clients.sh" | last)'"
fi

echo "export PATH='$pulumi_bin:$venv/bin':\"\$PATH\""
echo "export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true"
# Plain `pulumi config set --secret ...` / `pulumi up` use the same stack passphrase file as the
# project's commands (created on the first `scripts/up`), unless one is already chosen.
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  echo "export PULUMI_CONFIG_PASSPHRASE_FILE='${SIN_DATASTORES_HOME:-$HOME/.sin-datastores}/passphrase'"
fi
log "ready in $(( $(date +%s) - started )) s"
