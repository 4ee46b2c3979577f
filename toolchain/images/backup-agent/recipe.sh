# shellcheck shell=bash
# sin-local/backup-agent:<rev>-trixie: Debian trixie minbase + python3 with Debian's psycopg,
# redis, boto3, cryptography; runs the package backupagent that Pulumi uploads into
# /opt/sin-backup. Runs as root: it reads the PostgreSQL and Redis data volumes (owned by
# uid 999) read-only.
image_version="$(pin BACKUP_IMAGE_REVISION)"
image_suite="$(pin BACKUP_IMAGE_SUITE)"
image_packages=(python3 python3-psycopg python3-redis python3-boto3 python3-cryptography ca-certificates)
image_pins=()
image_config=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV PYTHONPATH=/opt/sin-backup'
  'ENV PYTHONUNBUFFERED=1'
  'ENV PYTHONDONTWRITEBYTECODE=1'
  'WORKDIR /opt/sin-backup'
  'CMD ["python3", "-m", "backupagent"]'
)

build_rootfs() {
  install_pkgs "${image_packages[@]}"
  mkdir -p "$root/opt/sin-backup"
  in_root python3 -c 'import psycopg, redis, boto3, botocore, cryptography' \
    || die "python3 in the backup agent rootfs cannot import psycopg, redis, boto3, cryptography"
  in_root python3 --version >&2
}

image_labels() {
  local p versions=""
  for p in python3 python3-psycopg python3-redis python3-boto3 python3-botocore python3-cryptography libc6; do
    versions="$versions $p=$(pkg_version "$p")"
  done
  echo "org.opencontainers.image.title=sin-local backup-agent"
  echo "org.opencontainers.image.description=Python 3 with Debian ${image_suite}'s psycopg, redis, boto3 and cryptography for the backup agent (code uploaded into /opt/sin-backup); built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  echo "sin.source.debian-packages=${versions# }"
}
