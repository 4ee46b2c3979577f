# shellcheck shell=bash
# sin-local/etcd:<3.5.x>-trixie: Debian trixie minbase + etcd-server, etcd-client (checked to be
# ETCD_VERSION) + etcd-entrypoint.sh beside this file: etcd runs as user etcd (uid 999) with the
# arguments the container is given, in the volume /var/lib/etcd (give --data-dir /var/lib/etcd;
# without one, etcd's default <name>.etcd is relative to that working directory). No ETCD_DATA_DIR
# in the image: etcd 3.5 refuses to start when a variable and a flag both set a setting.
image_version="$(pin ETCD_VERSION)"
image_suite="$(pin ETCD_IMAGE_SUITE)"
image_packages=(etcd-server etcd-client)
image_pins=()
image_files=("$toolchain_dir/images/entrypoint-lib.sh")
image_config=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'WORKDIR /var/lib/etcd'
  'VOLUME /var/lib/etcd'
  'EXPOSE 2379 2380'
  'ENTRYPOINT ["etcd-entrypoint.sh"]'
)

build_rootfs() {
  add_user etcd /var/lib/etcd /usr/sbin/nologin
  install_pkgs "${image_packages[@]}"
  check_pkg_version etcd-server "$image_version" ETCD_VERSION
  check_pkg_version etcd-client "$image_version" ETCD_VERSION
  install -D -m 644 "$toolchain_dir/images/entrypoint-lib.sh" "$root/usr/local/lib/sin/entrypoint-lib.sh"
  install -m 755 "$toolchain_dir/images/etcd/etcd-entrypoint.sh" "$root/usr/local/bin/etcd-entrypoint.sh"
  mkdir -p "$root/var/lib/etcd"
  chown 999:999 "$root/var/lib/etcd"
  chmod 0700 "$root/var/lib/etcd"
  local v c
  v="$(in_root etcd --version | head -n1)"
  c="$(in_root etcdctl version | head -n1)"
  [ "$v" = "etcd Version: $image_version" ] || die "etcd --version says '$v', want $image_version (ETCD_VERSION)"
  [ "$c" = "etcdctl version: $image_version" ] || die "etcdctl version says '$c', want $image_version (ETCD_VERSION)"
  log "in rootfs: $v; $c"
}

image_labels() {
  echo "org.opencontainers.image.title=sin-local etcd"
  echo "org.opencontainers.image.description=etcd ${image_version} from Debian ${image_suite} packages; built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  echo "sin.source.debian-packages=etcd-server=$(pkg_version etcd-server) etcd-client=$(pkg_version etcd-client) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)"
}
