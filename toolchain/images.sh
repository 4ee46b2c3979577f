#!/usr/bin/env bash
# Build the local service images without any container registry, one recipe each
# (toolchain/images/<name>/recipe.sh, next to the files it puts into the image):
#
#   sin-local/postgres:<16.x>-trixie    Debian trixie minbase + postgresql-client-17
#                                        + PostgreSQL 16 server from toolchain/pg16.sh
#                                        + images/postgres/docker-entrypoint.sh
#   sin-local/redis:<7.0.x>-bookworm     Debian bookworm minbase + redis-server, redis-tools
#                                        + images/redis/docker-entrypoint.sh
#   sin-local/backup-agent:<rev>-trixie  Debian trixie minbase + python3 with Debian's psycopg,
#                                        redis, boto3, cryptography; runs the package
#                                        backupagent that Pulumi uploads into /opt/sin-backup
# and the replicated topology's (#27), whose configs Pulumi uploads as root-only files under
# /run/secrets/ that the entrypoints copy for the server's non-root user
# (images/entrypoint-lib.sh):
#   sin-local/patroni:<4.0.x>-pg<16.x>-trixie  what the postgres image has (images/postgres/server.sh)
#                                        + Debian's patroni, python3-etcd + pg_basebackup,
#                                        pg_rewind, pg_controldata, pg_isready, pg_waldump 16 from
#                                        toolchain/pg16-tools.sh + images/patroni/patroni-entrypoint.sh
#                                        (config /run/secrets/patroni.yml)
#   sin-local/etcd:<3.5.x>-trixie        Debian trixie minbase + etcd-server, etcd-client
#                                        + images/etcd/etcd-entrypoint.sh (etcd's flags as arguments)
#   sin-local/haproxy:<3.0.x>-trixie     Debian trixie minbase + haproxy
#                                        + images/haproxy/haproxy-entrypoint.sh
#                                        (config /run/secrets/haproxy.cfg)
# (Redis Sentinel is the redis image: `redis-server <conf> --sentinel`.)
#
# Each root filesystem is made with debootstrap from the Debian mirror that apt on
# this machine uses (read from /etc/apt/sources.list*, or SIN_DEBIAN_MIRROR /
# SIN_DEBIAN_SECURITY_MIRROR), upgraded from <suite>-updates and <suite>-security,
# then `tar | docker import` with the image settings (ENTRYPOINT, CMD, ENV, ...); the
# machinery the recipes share is toolchain/images/rootfs.sh. One debootstrap per suite and run:
# the other images of that suite start from a copy of the first one's base.
#
# Caching, keyed by a hash of everything that goes in (the recipe and the files beside it,
# the other files it names in image_files, this driver, rootfs.sh, lib.sh, the pins in
# versions.env):
#   - an image already tagged with label sin.inputs-hash=<hash> is left alone;
#   - the rootfs tarball is kept as $SIN_CACHE/images/<name>-<version>-<suite>-<hash>.tar, so
#     after `docker system prune` or on a fresh dockerd the image is re-imported in seconds.
# Set SIN_IMAGES_REBUILD=1 to ignore both caches; SIN_IMAGES_TAG_PREFIX=<prefix> tags
# <prefix>/<name>:... instead of sin-local/<name>:... (with its own SIN_CACHE, since a build
# drops the tarballs of older inputs).
#
# Last stdout lines: postgres_image=<tag>, redis_image=<tag>, backup_image=<tag>,
# patroni_image=<tag>, etcd_image=<tag> and haproxy_image=<tag>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
. "$here/images/rootfs.sh"

require_root "debootstrap and chroot need root"

# ---------------------------------------------------------------- prerequisites
engine_out="$(bash "$here/docker-engine.sh")" || die "docker-engine.sh failed"
DOCKER="$(sed -n 's/^docker_client=//p' <<<"$engine_out" | tail -n1)"
[ -n "$DOCKER" ] || die "docker-engine.sh named no docker client"
pgdir="$(bash "$here/pg16.sh" | tail -n1)"
[ -x "$pgdir/bin/postgres" ] || die "pg16.sh gave no server binaries ($pgdir)"
pgtools="$(bash "$here/pg16-tools.sh" "$pgdir" | tail -n1)"
[ -x "$pgtools/bin/pg_rewind" ] || die "pg16-tools.sh gave no pg_rewind ($pgtools)"
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt_install debootstrap debian-archive-keyring
fi
find_mirrors
mkdir -p "$SIN_CACHE/images"
# This run's bases, one per suite (make_base); removed when the run ends (and those of a run
# killed hours ago, at the next start).
find "$SIN_CACHE/images" -maxdepth 1 -name 'bases.*' -mmin +240 -exec rm -rf '{}' + 2>/dev/null || :
run_bases="$(mktemp -d "$SIN_CACHE/images/bases.XXXXXX")"
trap 'rm -rf "$run_bases"' EXIT

# The tag of image $1, built or imported as its recipe says (in a subshell: each recipe
# defines the same names; set -e again, command substitution turns it off).
image() (
  set -e
  trap cleanup EXIT
  image_files=()
  . "$here/images/$1/recipe.sh"
  ensure_image "$1" >&2
  echo "$tag"
)

postgres_image="$(image postgres)"
redis_image="$(image redis)"
backup_image="$(image backup-agent)"
patroni_image="$(image patroni)"
etcd_image="$(image etcd)"
haproxy_image="$(image haproxy)"
echo "postgres_image=$postgres_image"
echo "redis_image=$redis_image"
echo "backup_image=$backup_image"
echo "patroni_image=$patroni_image"
echo "etcd_image=$etcd_image"
echo "haproxy_image=$haproxy_image"
