# shellcheck shell=bash
# sin-local/redis:<7.0.x>-bookworm: Debian bookworm minbase + redis-server, redis-tools (checked
# to be REDIS_VERSION) + docker-entrypoint.sh beside this file.
image_version="$(pin REDIS_VERSION)"
image_suite="$(pin REDIS_IMAGE_SUITE)"
image_packages=(redis-server redis-tools)
image_pins=()
image_config=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'WORKDIR /data'
  'VOLUME /data'
  'EXPOSE 6379'
  'ENTRYPOINT ["docker-entrypoint.sh"]'
  'CMD ["redis-server"]'
)

build_rootfs() {
  add_user redis /var/lib/redis /usr/sbin/nologin
  install_pkgs "${image_packages[@]}"
  check_pkg_version redis-server "$image_version" REDIS_VERSION
  install -m 755 "$toolchain_dir/images/redis/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$root/data" "$root/usr/local/etc/redis"
  chown 999:999 "$root/data"
  in_root redis-server --version >&2
  in_root redis-cli --version >/dev/null
}

image_labels() {
  echo "org.opencontainers.image.title=sin-local redis"
  echo "org.opencontainers.image.description=Redis ${image_version} from Debian ${image_suite} packages; built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  echo "sin.source.debian-packages=redis-server=$(pkg_version redis-server) redis-tools=$(pkg_version redis-tools) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)"
}
