#!/usr/bin/env bash
# Builds (or finds in the cache) the offline Pulumi toolchain for Python programs:
#   pulumi                          the CLI, github.com/pulumi/pulumi/pkg/v3/cmd/pulumi @ v$PULUMI_VERSION
#   pulumi-language-python          our own Python language host (toolchain/pulumi-build/cmd/...)
#   pulumi-language-python-exec     our own program runner   (toolchain/python-host/)
#   plugin_scan.py                  the host's plugin scan (embedded in it too), which the
#                                   program runner started ahead runs for the host
#   pulumi-resource-pulumi-python   our own dynamic provider (toolchain/python-host/)
#   ../plugins/pulumi-resource-sin-postdeploy   the post-deploy step's provider
#                                   (toolchain/pulumi-build/cmd/...); off PATH: setup.sh installs
#                                   it into the engine's plugin cache
# all in one directory, built from the Go module proxy with the module graph pinned by
# toolchain/pulumi-build/go.{mod,sum}.
#
# Usage:  bin=$(toolchain/pulumi.sh | tail -1)      # last stdout line = the bin dir
#         toolchain/pulumi.sh --force                # rebuild even if cached
#         toolchain/pulumi.sh --update-go-mod        # after changing PULUMI_VERSION: re-pin go.mod/go.sum
# Logs go to stderr. Idempotent: a cached build returns in well under a second.
#
# Cache layout ($SIN_CACHE from versions.env):
#   $SIN_CACHE/pulumi/<version>/build-<inputs hash>/bin/   the binaries (+ .complete marker beside bin)
#   $SIN_CACHE/pulumi/<version>/bin -> build-<hash>/bin    symlink, swapped atomically after a build
# The inputs hash covers the version, build tags/ldflags, go.mod, go.sum, our Go host, the
# dependency patches and go-patch.sh, the Python helpers, so any change to them rebuilds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
. "$here/go-patch.sh"

force=0
update_go_mod=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --update-go-mod) update_go_mod=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

version="$(pin PULUMI_VERSION)"
version="${version#v}"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "PULUMI_VERSION='$PULUMI_VERSION' is not X.Y.Z"

build_mod="$here/pulumi-build"
host_src="$here/python-host"
cache_root="$SIN_CACHE/pulumi/$version"
cli_pkg="github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
version_var="github.com/pulumi/pulumi/sdk/v3/go/common/version.Version"
step_provider_version="$(pin POSTDEPLOY_PROVIDER_VERSION)"

if [ "$update_go_mod" = 1 ]; then
    go_bin="$(require_go)"
    log "re-pinning $build_mod to pkg/v3 and sdk/v3 v$version"
    (cd "$build_mod" &&
        "$go_bin" get "github.com/pulumi/pulumi/pkg/v3@v$version" "github.com/pulumi/pulumi/sdk/v3@v$version" >&2 &&
        "$go_bin" mod tidy >&2)
fi

# The committed go.mod must pin the CLI at exactly PULUMI_VERSION.
grep -Eq "^[[:space:]]*(require[[:space:]]+)?github.com/pulumi/pulumi/pkg/v3 v${version//./\\.}([[:space:]]|\$)" "$build_mod/go.mod" ||
    die "$build_mod/go.mod does not require github.com/pulumi/pulumi/pkg/v3 v$version; run: $0 --update-go-mod"

build_tags="osusergo,grpcnotrace"
ldflags="-s -w -X $version_var=v$version"

inputs_hash="$(
    cd "$here"
    {
        echo "pulumi $version tags=$build_tags ldflags=$ldflags step-provider $step_provider_version"
        find pulumi-build python-host go-patch.sh -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)"
build_dir="$cache_root/build-$inputs_hash"
bin_link="$cache_root/bin"

is_complete() { [ -f "$build_dir/.complete" ] && [ -x "$build_dir/bin/pulumi" ] &&
                [ -x "$build_dir/plugins/pulumi-resource-sin-postdeploy" ]; }

publish() {
    # Point $cache_root/bin at this build (atomic rename of a fresh symlink).
    if [ "$(readlink "$bin_link" 2>/dev/null || true)" != "build-$inputs_hash/bin" ]; then
        ln -sfn "build-$inputs_hash/bin" "$cache_root/.bin.new.$$"
        mv -Tf "$cache_root/.bin.new.$$" "$bin_link"
    fi
}

if [ "$force" = 0 ] && is_complete; then
    publish
    log "cached: pulumi v$version (inputs $inputs_hash) in $bin_link"
    echo "$bin_link"
    exit 0
fi

# An installed pulumi of exactly the pinned version (with a Python host beside it) will do; a build
# of this cache on PATH (a shell that eval'ed setup.sh before) will not: its inputs may be older.
if [ "$force" = 0 ] && sys_pulumi="$(command -v pulumi 2>/dev/null)"; then
    sys_dir="$(dirname "$(readlink -f "$sys_pulumi")")"
    sys_version="$(PULUMI_SKIP_UPDATE_CHECK=true "$sys_pulumi" version 2>/dev/null || true)"
    if [ "${sys_dir#"$(readlink -m "$cache_root")"/}" = "$sys_dir" ] && [ "$sys_version" = "v$version" ] &&
        [ -x "$sys_dir/pulumi-language-python" ] &&
        [ -e "$sys_dir/pulumi-language-python-exec" ] && [ -x "$sys_dir/../plugins/pulumi-resource-sin-postdeploy" ]; then
        log "using the installed pulumi $sys_version in $sys_dir"
        echo "$sys_dir"
        exit 0
    fi
fi

go_bin="$(require_go)"
mkdir -p "$cache_root"

# One build at a time per version; a second caller waits and then finds the cache.
lock_build "$cache_root/.lock"
if [ "$force" = 0 ] && is_complete; then
    publish
    log "cached (built by a concurrent run): $bin_link"
    echo "$bin_link"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/.tmp-build.XXXXXX")"
src="$(mktemp -d "$cache_root/.tmp-src.XXXXXX")"
trap 'rm -rf "$tmp" "$src"' EXIT
chmod 0755 "$tmp"
mkdir -p "$tmp/bin" "$tmp/plugins"

# The build module, with each dependency that has patches (patches/<module path>/*.patch; each
# says why) replaced by a patched copy of its pinned version, so go.mod and go.sum stay as pinned.
cp -a "$build_mod/." "$src/module/"
patch_modules "$go_bin" "$src/module" "$build_mod/patches" "$src/replace"

log "building pulumi v$version with $("$go_bin" version) (inputs $inputs_hash); cold builds take ~10-25 min on 2 cores"
start=$(date +%s)
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -p=${PULUMI_BUILD_JOBS:-2}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
(
    cd "$src/module"
    log "go build $cli_pkg"
    "$go_bin" build -trimpath -tags "$build_tags" -ldflags "$ldflags" -o "$tmp/bin/pulumi" "$cli_pkg"
    log "go build ./cmd/pulumi-language-python"
    "$go_bin" build -trimpath -tags "$build_tags" -ldflags "$ldflags" \
        -o "$tmp/bin/pulumi-language-python" ./cmd/pulumi-language-python
    log "go build ./cmd/pulumi-resource-sin-postdeploy"
    "$go_bin" build -trimpath -tags "$build_tags" -ldflags "-s -w -X main.version=$step_provider_version" \
        -o "$tmp/plugins/pulumi-resource-sin-postdeploy" ./cmd/pulumi-resource-sin-postdeploy
) >&2
install -m 0755 "$host_src/pulumi-language-python-exec" "$tmp/bin/pulumi-language-python-exec"
install -m 0644 "$build_mod/cmd/pulumi-language-python/plugin_scan.py" "$tmp/bin/plugin_scan.py"
install -m 0755 "$host_src/pulumi-resource-pulumi-python" "$tmp/bin/pulumi-resource-pulumi-python"

got="$(PULUMI_SKIP_UPDATE_CHECK=true "$tmp/bin/pulumi" version)"
[ "$got" = "v$version" ] || die "built pulumi reports '$got', expected v$version"

echo "pulumi v$version inputs=$inputs_hash built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))" >"$tmp/.complete"
rm -rf "$build_dir" "$src"
mv "$tmp" "$build_dir"
trap - EXIT
publish
# Drop builds of this version made from older inputs.
for old in "$cache_root"/build-*; do
    [ "$old" = "$build_dir" ] || rm -rf "$old"
done
log "built in $(( $(date +%s) - start ))s: $(du -sh "$build_dir" | cut -f1) in $bin_link"
echo "$bin_link"
