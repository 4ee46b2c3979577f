#!/usr/bin/env bash
# Finds or builds the Pulumi toolchain for Python programs, upstream's as shipped:
#   pulumi                          the CLI, github.com/pulumi/pulumi/pkg/v3/cmd/pulumi @ v$PULUMI_VERSION,
#                                   unpatched
#   pulumi-language-python          the Python language host: ours (toolchain/pulumi-build/cmd/...),
#                                   standing in for upstream's, whose module the Go proxy refuses
#   pulumi-language-python-exec     upstream's program runner     } copied from the sdk/v3 module
#   pulumi-resource-pulumi-python   upstream's dynamic provider   } at v$PULUMI_VERSION (python/)
# A `pulumi` already installed on PATH with its `pulumi-language-python` beside it (any version;
# a warning when it is older than the pinned Python SDK) is used as it is: then nothing is built.
# Builds use the Go module proxy, with the module graph pinned by toolchain/pulumi-build/go.{mod,sum}.
#
# Usage:  bin=$(toolchain/pulumi.sh | tail -1)    # the last stdout line is the bin dir
#         toolchain/pulumi.sh --force              # rebuild even if cached
#         toolchain/pulumi.sh --update-go-mod      # after changing PULUMI_VERSION: re-pin go.mod/go.sum
# Logs go to stderr. Idempotent: a cached build returns in well under a second.
#
# Cache layout ($SIN_CACHE from versions.env), one directory per inputs hash, never deleted by
# this script (safe to wipe by hand when nothing runs):
#   $SIN_CACHE/pulumi-upstream/<version>/build-<inputs hash>/bin/   (+ .complete)
# The inputs hash covers the version, build tags/ldflags, go.mod, go.sum and our Go sources.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

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
sdk_version="$(pin PULUMI_PYTHON_SDK_VERSION)"

build_mod="$here/pulumi-build"
cache_base="$SIN_CACHE/pulumi-upstream"
cli_pkg="github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
sdk_module="github.com/pulumi/pulumi/sdk/v3"
version_var="$sdk_module/go/common/version.Version"

if [ "$update_go_mod" = 1 ]; then
    go_bin="$(require_go)"
    log "re-pinning $build_mod to pkg/v3 and sdk/v3 v$version"
    (cd "$build_mod" &&
        "$go_bin" get "github.com/pulumi/pulumi/pkg/v3@v$version" "$sdk_module@v$version" >&2 &&
        "$go_bin" mod tidy >&2)
fi

# The committed go.mod must pin the CLI and the SDK at exactly PULUMI_VERSION.
for module in github.com/pulumi/pulumi/pkg/v3 "$sdk_module"; do
    grep -Eq "^[[:space:]]*(require[[:space:]]+)?$module v${version//./\\.}([[:space:]]|\$)" "$build_mod/go.mod" ||
        die "$build_mod/go.mod does not require $module v$version; run: $0 --update-go-mod"
done

build_tags="osusergo,grpcnotrace"
ldflags="-s -w -X $version_var=v$version"
inputs_hash="$(
    cd "$here"
    {
        echo "pulumi $version tags=$build_tags ldflags=$ldflags"
        find pulumi-build -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)"

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -p=${PULUMI_BUILD_JOBS:-2}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# go_build OUT PACKAGE [LDFLAGS]: a static, trimmed build from the pinned module graph.
go_build() {
    log "go build $2"
    (cd "$build_mod" && "$go_bin" build -trimpath -tags "$build_tags" -ldflags "${3:-$ldflags}" -o "$1" "$2") >&2
}

# cached_or_locked DIR CHECK: true when CHECK passes for DIR, else takes DIR's build lock (a second
# caller waits) and is true when a concurrent run filled it meanwhile.
cached_or_locked() {
    [ "$force" = 0 ] && "$2" "$1" && return 0
    mkdir -p "$(dirname "$1")"
    lock_build "$1.lock"
    [ "$force" = 0 ] && "$2" "$1"
}

# publish TMP DIR: move a finished build into place.
publish() {
    rm -rf "$2"
    mv "$1" "$2"
}

# An installed upstream CLI with its Python host beside it (not one of this cache's builds on PATH,
# e.g. from a shell that eval'ed setup.sh before: its inputs may be older).
installed_cli() {
    local found dir
    [ "$force" = 0 ] || return 1
    found="$(command -v pulumi 2>/dev/null)" || return 1
    dir="$(dirname "$(readlink -f "$found")")"
    case "$dir/" in "$(readlink -m "$SIN_CACHE")"/*) return 1 ;; esac
    [ -x "$dir/pulumi-language-python" ] || return 1
    echo "$dir"
}

if sys_dir="$(installed_cli)"; then
    sys_version="$(PULUMI_SKIP_UPDATE_CHECK=true "$sys_dir/pulumi" version 2>/dev/null || true)"
    [ "$(printf '%s\n%s\n' "$sdk_version" "${sys_version#v}" | sort -V | head -n 1)" = "$sdk_version" ] ||
        log "WARNING: the installed pulumi $sys_version is older than the Python SDK $sdk_version of requirements.txt; install pulumi >= $sdk_version"
    log "using the installed pulumi $sys_version in $sys_dir"
    echo "$sys_dir"
    exit 0
fi

build_dir="$cache_base/$version/build-$inputs_hash"
is_complete() { [ -f "$1/.complete" ] && [ -x "$1/bin/pulumi" ] && [ -x "$1/bin/pulumi-language-python-exec" ]; }
if cached_or_locked "$build_dir" is_complete; then
    log "cached: pulumi v$version (inputs $inputs_hash) in $build_dir/bin"
    echo "$build_dir/bin"
    exit 0
fi

go_bin="$(require_go)"
tmp="$(mktemp -d "$(dirname "$build_dir")/.tmp-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"
mkdir -p "$tmp/bin"

log "building pulumi v$version with $("$go_bin" version) (inputs $inputs_hash); cold builds take ~10-25 min on 2 cores"
start=$(date +%s)
go_build "$tmp/bin/pulumi" "$cli_pkg"
go_build "$tmp/bin/pulumi-language-python" ./cmd/pulumi-language-python

# Upstream's Python scripts, as the sdk/v3 module of this version ships them.
sdk_dir="$(cd "$build_mod" && "$go_bin" list -m -f '{{.Dir}}' "$sdk_module")"
[ -f "$sdk_dir/python/cmd/pulumi-language-python-exec" ] ||
    die "$sdk_module v$version in $sdk_dir has no python/cmd/pulumi-language-python-exec"
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$tmp/bin/pulumi-language-python-exec"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$tmp/bin/pulumi-resource-pulumi-python"

got="$(PULUMI_SKIP_UPDATE_CHECK=true "$tmp/bin/pulumi" version)"
[ "$got" = "v$version" ] || die "built pulumi reports '$got', expected v$version"

echo "pulumi v$version inputs=$inputs_hash built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))" >"$tmp/.complete"
publish "$tmp" "$build_dir"
trap - EXIT
log "built in $(( $(date +%s) - start ))s: $(du -sh "$build_dir" | cut -f1) in $build_dir/bin"
echo "$build_dir/bin"
