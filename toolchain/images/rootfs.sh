# shellcheck shell=bash
# The machinery the image recipes share (sourced by toolchain/images.sh after lib.sh): a Debian
# minbase root made with debootstrap and brought up to date, helpers to work inside it, the
# rootfs tarball cache and `docker import` with the image settings.
#
# A recipe, toolchain/images/<name>/recipe.sh, sets:
#   image_version, image_suite   the tag is $SIN_IMAGES_TAG_PREFIX/<name>:<version>-<suite>
#   image_packages=(...)         Debian packages it installs (part of the inputs hash)
#   image_pins=(...)             other KEY=VALUE inputs of the hash (versions.env pins it uses)
#   image_files=(...)            files outside its directory that it uses (part of the hash), e.g.
#                                postgres/server.sh, entrypoint-lib.sh
#   image_config=(...)           ENV/VOLUME/EXPOSE/WORKDIR/STOPSIGNAL/ENTRYPOINT/CMD lines
# and defines build_rootfs (runs after make_base, with the root at $root) and image_labels
# (prints KEY=VALUE labels; may ask the root for package versions).

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

# Set $mirror and $security_mirror: the Debian mirror apt on this machine uses (or
# SIN_DEBIAN_MIRROR / SIN_DEBIAN_SECURITY_MIRROR).
find_mirrors() {
  local host_codename
  host_codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  [ -n "$host_codename" ] || die "cannot tell this machine's Debian codename"
  mirror="${SIN_DEBIAN_MIRROR:-$(apt_sources | awk -F'\t' -v c="$host_codename" '$2 == c {print $1; exit}')}"
  security_mirror="${SIN_DEBIAN_SECURITY_MIRROR:-$(apt_sources | awk -F'\t' -v c="$host_codename-security" '$2 == c {print $1; exit}')}"
  [ -n "$mirror" ] || die "no apt source for suite $host_codename found in /etc/apt/sources.list*; set SIN_DEBIAN_MIRROR"
  mirror="${mirror%/}"; security_mirror="${security_mirror%/}"
  log "Debian mirror: $mirror; security: ${security_mirror:-none}"
}

# ---------------------------------------------------------------- the root being built
builds=()
# Unmount and remove the roots this (sub)shell made; runs on EXIT.
cleanup() {
  local d m
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

sha() { sha256sum | cut -c1-16; }
files_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

image_hash_label() {
  "$DOCKER" image inspect --format '{{ index .Config.Labels "sin.inputs-hash" }}' "$1" 2>/dev/null || true
}

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

# debootstrap a minbase system for suite $1 into $root, then bring it up to date
# from <suite>-updates and <suite>-security of the same mirrors. With $run_bases set (a directory
# images.sh makes for one run and removes after it), the first base of a suite is kept there as a
# tarball and the next images of that suite in the run start from a copy of it: one debootstrap
# per suite and run.
make_base() {
  local suite="$1" t0=$SECONDS base="${run_bases:+$run_bases/$1.tar}"
  if [ -n "$base" ] && [ -s "$base" ]; then
    tar -C "$root" --numeric-owner --xattrs -xf "$base"
    mount -t proc proc "$root/proc"
    log "base $suite from this run's debootstrap in $((SECONDS - t0))s"
    return 0
  fi
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
  deny_service_starts "$root/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90sin-no-recommends"
  # Build-time only: the chroot's _apt user cannot write the partial dirs here.
  printf 'APT::Sandbox::User "root";\n' >"$root/etc/apt/apt.conf.d/99sin-build-sandbox"
  mount -t proc proc "$root/proc"
  in_root apt-get update -qq >&2 || die "apt-get update in the $suite chroot failed"
  in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade >&2 \
    || die "apt-get dist-upgrade in the $suite chroot failed"
  if [ -n "$base" ]; then
    # /dev too: debootstrap's device nodes, which the chroot's maintainer scripts use.
    tar -C "$root" --numeric-owner --xattrs --exclude='./proc/*' --exclude='./sys/*' -cf "$base.part" .
    mv "$base.part" "$base"
  fi
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

# check_pkg_version PACKAGE VERSION PIN: die unless the installed PACKAGE is upstream VERSION
# (any epoch and Debian revision), naming the versions.env PIN.
check_pkg_version() {
  local v; v="$(pkg_version "$1")"
  case "${v#*:}" in
    "$2"-*|"$2"+*|"$2"~*|"$2") ;;
    *) die "$1 in $image_suite is $v, want $2 ($3 in toolchain/versions.env)";;
  esac
}

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

# import TARFILE TAG META CHANGE...: META holds KEY=VALUE lines that become labels.
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

# ---------------------------------------------------------------- one image
# The image of the recipe sourced for $1 (toolchain/images/$1/recipe.sh): left alone when the tag
# carries label sin.inputs-hash=<hash of the inputs>, else imported from the cached rootfs
# tarball, else built. Sets $tag.
ensure_image() {
  local name="$1" hash tarfile t0 old_id
  tag="$SIN_IMAGES_TAG_PREFIX/$name:$image_version-$image_suite"
  hash="$( { echo "rev=$(pin IMAGES_REVISION)"; echo "suite=$image_suite"; echo "version=$image_version"
             echo "pkgs=${image_packages[*]}"; printf '%s\n' "${image_pins[@]}"
             files_hash "$toolchain_dir/lib.sh" "$toolchain_dir/images.sh" "$toolchain_dir/images/rootfs.sh" \
               "$toolchain_dir/images/$name"/* ${image_files[@]+"${image_files[@]}"}; } | sha)"
  tarfile="$SIN_CACHE/images/$name-$image_version-$image_suite-$hash.tar"
  if [ -z "${SIN_IMAGES_REBUILD:-}" ] && [ "$(image_hash_label "$tag")" = "$hash" ]; then
    log "$tag is up to date (inputs $hash)"
    return 0
  fi
  if [ -n "${SIN_IMAGES_REBUILD:-}" ] || [ ! -s "$tarfile" ] || [ ! -s "$tarfile.meta" ]; then
    t0=$SECONDS
    rm -f "$SIN_CACHE/images/$name"-*.tar "$SIN_CACHE/images/$name"-*.tar.meta   # older inputs
    root="$(mktemp -d "$SIN_CACHE/images/build.$name.XXXXXX")"; builds+=("$root")
    make_base "$image_suite"
    build_rootfs
    {
      image_labels
      echo "sin.inputs-hash=$hash"
      echo "sin.source.rootfs=debian:$image_suite debootstrap minbase, upgraded $(date -u +%Y-%m-%d)"
    } >"$tarfile.meta"
    finish_root
    save_tar "$tarfile"
    log "$name rootfs built in $((SECONDS - t0))s: $tarfile ($(du -h "$tarfile" | cut -f1))"
  else
    log "re-importing cached rootfs $tarfile"
  fi
  old_id="$("$DOCKER" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  import_image "$tarfile" "$tag" "$tarfile.meta" "${image_config[@]}"
  [ "$(image_hash_label "$tag")" = "$hash" ] || die "$tag lacks label sin.inputs-hash=$hash after import"
  # Drop the image this tag pointed to before, unless a container still uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$("$DOCKER" image inspect --format '{{.Id}}' "$tag")" ]; then
    "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || log "kept previous image $old_id (still in use)"
  fi
}
