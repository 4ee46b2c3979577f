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
#
# Each root filesystem is made with debootstrap from the Debian mirror that apt on
# this machine uses (read from /etc/apt/sources.list*, or SIN_DEBIAN_MIRROR /
# SIN_DEBIAN_SECURITY_MIRROR), upgraded from <suite>-updates and <suite>-security,
# then `tar | docker import` with the image settings (ENTRYPOINT, CMD, ENV, ...); the
# machinery the recipes share is toolchain/images/rootfs.sh.
#
# Caching, keyed by a hash of everything that goes in (the recipe and the files beside it,
# this driver, rootfs.sh, lib.sh, the pins in versions.env):
#   - an image already tagged with label sin.inputs-hash=<hash> is left alone;
#   - the rootfs tarball is kept as $SIN_CACHE/images/<name>-<version>-<suite>-<hash>.tar, so
#     after `docker system prune` or on a fresh dockerd the image is re-imported in seconds.
# Set SIN_IMAGES_REBUILD=1 to ignore both caches; SIN_IMAGES_TAG_PREFIX=<prefix> tags
# <prefix>/<name>:... instead of sin-local/<name>:... (with its own SIN_CACHE, since a build
# drops the tarballs of older inputs).
#
# Last stdout lines: postgres_image=<tag>, redis_image=<tag> and backup_image=<tag>.
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
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt_install debootstrap debian-archive-keyring
fi
find_mirrors
mkdir -p "$SIN_CACHE/images"

# The tag of image $1, built or imported as its recipe says (in a subshell: each recipe
# defines the same names; set -e again, command substitution turns it off).
image() (
  set -e
  trap cleanup EXIT
  . "$here/images/$1/recipe.sh"
  ensure_image "$1" >&2
  echo "$tag"
)

postgres_image="$(image postgres)"
redis_image="$(image redis)"
backup_image="$(image backup-agent)"
echo "postgres_image=$postgres_image"
echo "redis_image=$redis_image"
echo "backup_image=$backup_image"
