# shellcheck shell=bash
# sin-local/haproxy:<3.0.x>-trixie: Debian trixie minbase + haproxy (checked to be
# HAPROXY_VERSION) + haproxy-entrypoint.sh beside this file: `haproxy -W -db -f` the config
# uploaded as /run/secrets/haproxy.cfg (root, 0400), as user haproxy (uid 999; ports > 1024).
image_version="$(pin HAPROXY_VERSION)"
image_suite="$(pin HAPROXY_IMAGE_SUITE)"
image_packages=(haproxy)
image_pins=()
image_files=("$toolchain_dir/images/entrypoint-lib.sh")
image_config=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENTRYPOINT ["haproxy-entrypoint.sh"]'
  'CMD ["haproxy"]'
)

build_rootfs() {
  add_user haproxy /var/lib/haproxy /usr/sbin/nologin
  install_pkgs "${image_packages[@]}"
  check_pkg_version haproxy "$image_version" HAPROXY_VERSION
  install -D -m 644 "$toolchain_dir/images/entrypoint-lib.sh" "$root/usr/local/lib/sin/entrypoint-lib.sh"
  install -m 755 "$toolchain_dir/images/haproxy/haproxy-entrypoint.sh" "$root/usr/local/bin/haproxy-entrypoint.sh"
  local v
  v="$(in_root haproxy -v | head -n1)"
  case "$v" in "HAProxy version $image_version-"*|"HAProxy version $image_version "*) ;;
    *) die "haproxy -v says '$v', want $image_version (HAPROXY_VERSION)";; esac
  # A config of the shape the topology uses: a TCP frontend to the server whose REST check says
  # it is the primary.
  cat >"$root/tmp/smoke.cfg" <<'CFG'
global
  log stderr format raw local0
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 30m
  timeout server 30m
listen primary
  bind 127.0.0.1:5000
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
  server pg1 127.0.0.1:5432 check port 8008
CFG
  in_root haproxy -c -f /tmp/smoke.cfg >&2 || die "haproxy -c refused the sample config"
  rm -f "$root/tmp/smoke.cfg"
  log "in rootfs: $v"
}

image_labels() {
  echo "org.opencontainers.image.title=sin-local haproxy"
  echo "org.opencontainers.image.description=HAProxy ${image_version} from Debian ${image_suite} packages; built locally without a registry"
  echo "org.opencontainers.image.version=${image_version}"
  echo "sin.source.debian-packages=haproxy=$(pkg_version haproxy) util-linux=$(pkg_version util-linux) libc6=$(pkg_version libc6)"
}
